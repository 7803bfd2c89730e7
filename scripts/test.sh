#!/usr/bin/env bash
# The test command: installs everything (scripts/setup.sh), then runs the static checks and
# every test tier against real nats-server and kube-apiserver processes it starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${FLUXRELAY_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"

echo "== ruff"; ruff check . && ruff format --check .
echo "== mypy (strict)"; mypy
echo "== import contracts"; lint-imports
echo "== generated schemas are current"; python -m schemas.cdevents.generate --check
echo "== pytest"
pytest -q "$@"
