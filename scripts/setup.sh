#!/usr/bin/env bash
# Installs what fluxrelay needs on a fresh Debian (bookworm) machine: the real servers its
# tests and quick start use (nats-server, etcd; kube-apiserver comes from ../shared or is
# built once), load tools, and a virtualenv with the package and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(nats-server etcd-server wrk valgrind skopeo docker-registry webhook prometheus python3-venv ca-certificates)
missing=()
for pkg in "${DEBS[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ! command -v kubectl >/dev/null 2>&1; then
  missing+=(kubernetes-client)
fi
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's nats-server and etcd packages start system services on install; fluxrelay's
# tests and quick start run their own processes on free ports, so those are left alone.

PY=${PYTHON:-python3}
VENV=${FLUXRELAY_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -e '.[dev]'
