#!/usr/bin/env bash
# The run command: installs what is needed (scripts/setup.sh), then starts nats-server, a
# local kube-apiserver + etcd (unless $KUBECONFIG is set), the receiver and the reconciler,
# and leaves them running until Ctrl-C. See scripts/quickstart.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${FLUXRELAY_VENV:-.venv}
exec "$VENV/bin/python" scripts/quickstart.py "$@"
