#!/usr/bin/env bash
# Installs what the tests need, then runs them all against real services:
#   Debian packages (Prometheus, Alertmanager, PostgreSQL, Java/Maven if missing), the
#   Kafka jars from Maven Central (cached), driftline with its test extras, then ruff and
#   mypy (the quality gate), then pytest.
# Extra arguments go to pytest (then in one process), e.g. scripts/test.sh -k kafka -x
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The quality gate: lint everything, type-check the packages (failures stop the run).
echo "test.sh: ruff check" >&2
python3 -m ruff check .
packages=()
for pkg in monitor detectors embeddings training; do [[ -d "$pkg" ]] && packages+=("$pkg"); done
echo "test.sh: mypy ${packages[*]}" >&2
python3 -m mypy "${packages[@]}"

# With no arguments (CI): three pytest processes side by side, each with its own temporary
# folder, services (a broker, PostgreSQL... of its own) and block of ports. The integration
# tests (real services, mostly waiting on them) run in order in two: the delivery suite under
# faults (both Kafka clients) in one, every other integration test in the other (streamed),
# which then also runs the model-verdict simulations, the longest unit tests, so that the
# three end together; the CPU-bound unit tests run in the third. (Four processes were slower
# on 2 cores: 15 min 45 s against 14 min 5 s.) The other logs are printed when all are done.
# With arguments: one pytest process, as asked.
if [[ $# -gt 0 || "${DRIFTLINE_TEST_SERIAL:-0}" == 1 ]]; then
  exec python3 -m pytest "$@"
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/driftline-tests.XXXXXX")
export DRIFTLINE_TEST_PORT_BLOCKS=3
faults=(tests/integration/test_faults.py tests/integration/test_hardening.py)
moved=(tests/daemon/test_model_verdict.py)
common=(-p no:cacheprovider --durations=12)
DRIFTLINE_TEST_PORT_BLOCK=0 python3 -m pytest "${common[@]}" --basetemp "$tmp/unit" \
  --ignore=tests/integration --ignore="${moved[0]}" >"$tmp/unit.log" 2>&1 &
unit_pid=$!
DRIFTLINE_TEST_PORT_BLOCK=1 python3 -m pytest "${common[@]}" --basetemp "$tmp/faults" \
  "${faults[@]}" >"$tmp/faults.log" 2>&1 &
faults_pid=$!
set +e
ignores=()
for f in "${faults[@]}"; do ignores+=("--ignore=$f"); done
DRIFTLINE_TEST_PORT_BLOCK=2 python3 -m pytest "${common[@]}" --basetemp "$tmp/integration" \
  tests/integration "${ignores[@]}" "${moved[@]}"
integration_rc=$?
wait "$faults_pid"
faults_rc=$?
wait "$unit_pid"
unit_rc=$?
set -e
echo "=================== integration tests under faults (run beside the others) ==================="
cat "$tmp/faults.log"
echo "=================== unit tests (run beside the integration tests) ==================="
cat "$tmp/unit.log"
echo "test.sh: integration tests exit $integration_rc, under faults $faults_rc," \
  "unit tests exit $unit_rc" >&2
rm -rf "$tmp"
(( integration_rc == 0 && faults_rc == 0 && unit_rc == 0 ))
