"""Tests of the wire contract in ``schemas/``."""
