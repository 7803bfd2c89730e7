"""Tests that run against the real kube-apiserver + etcd."""
