#!/usr/bin/env bash
# The run command: installs what is needed (scripts/setup.sh), then starts nats-server, a
# local kube-apiserver + etcd (unless $KUBECONFIG is set), the receiver and the reconciler,
# and leaves them running until Ctrl-C, or SIGINT or SIGTERM to this PID alone (exec: the
# quick start takes over the shell's PID), which stops them all. See scripts/quickstart.py.
set -euo pipefail
cd "$(dirname "$0")/.."
# A stop signal to this PID during setup ends the run when the step under way finishes (bash
# acts on a trapped signal once its foreground command returns) instead of going on to start
# everything; exec resets the traps, and the quick start handles its own.
trap 'exit 130' INT
trap 'exit 143' TERM
bash scripts/setup.sh
VENV=${FLUXRELAY_VENV:-.venv}
exec "$VENV/bin/python" scripts/quickstart.py "$@"
