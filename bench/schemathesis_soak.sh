#!/usr/bin/env bash
# Long schemathesis run over /openapi.json against a live `pgjobs server`: many more
# generated requests than CI (default 1,000 per operation, ~20,000 in all), random
# seeds, no 5xx and no schema violations allowed.
#
#   bench/schemathesis_soak.sh            # 1,000 examples per operation
#   EXAMPLES=5000 bench/schemathesis_soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bin/_env.sh
services="$(python -m pgjobs.dev.services env)"
eval "$services"
if [ -n "${PGJOBS_DEV_STARTED:-}" ]; then
    # shellcheck disable=SC2086  # one word per service name
    trap 'python -m pgjobs.dev.services stop $PGJOBS_DEV_STARTED' EXIT
fi
examples="${EXAMPLES:-1000}"
started=$(date +%s)
PGJOBS_SCHEMA_EXAMPLES="$examples" PGJOBS_SCHEMA_RANDOM=1 PGJOBS_SCHEMA_MIN_CASES=$((examples * 5)) \
    python -m pytest tests/process/test_api_schema.py -q -s "$@"
echo "soak: ${examples} examples per operation in $(( $(date +%s) - started )) s"
