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

# With no arguments (CI): four pytest processes side by side, each with its own temporary
# folder, services (a broker, PostgreSQL... of its own) and block of ports, so the two cores
# stay busy while the service tests wait. The integration tests (real services, mostly
# waiting on them) run in order in two: the delivery suite under faults (both Kafka clients)
# in one, every other integration test in another, streamed; the CPU-bound unit tests are
# split in two (the daemon's, and the rest). The other logs are printed when all are done.
# With arguments: one pytest process, as asked.
if [[ $# -gt 0 || "${DRIFTLINE_TEST_SERIAL:-0}" == 1 ]]; then
  exec python3 -m pytest "$@"
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/driftline-tests.XXXXXX")
export DRIFTLINE_TEST_PORT_BLOCKS=4
faults=(tests/integration/test_faults.py tests/integration/test_hardening.py)
common=(-p no:cacheprovider --durations=12)
declare -A groups=(
  [faults]="${faults[*]}"
  [unit-daemon]="tests/daemon"
  [unit-rest]="tests --ignore=tests/integration --ignore=tests/daemon"
)
names=(faults unit-daemon unit-rest)
pids=()
block=0
for name in "${names[@]}"; do
  # shellcheck disable=SC2086  # each group is a list of pytest arguments
  DRIFTLINE_TEST_PORT_BLOCK=$block python3 -m pytest "${common[@]}" --basetemp "$tmp/$name" \
    ${groups[$name]} >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  block=$((block + 1))
done
set +e
ignores=()
for f in "${faults[@]}"; do ignores+=("--ignore=$f"); done
DRIFTLINE_TEST_PORT_BLOCK=$block python3 -m pytest "${common[@]}" \
  --basetemp "$tmp/integration" tests/integration "${ignores[@]}"
rc=$?
summary="integration tests exit $rc"
for i in "${!names[@]}"; do
  wait "${pids[$i]}"
  group_rc=$?
  (( group_rc == 0 )) || rc=1
  summary+=", ${names[$i]} exit $group_rc"
  echo "=================== ${names[$i]} tests (run beside the integration tests) ==================="
  cat "$tmp/${names[$i]}.log"
done
set -e
echo "test.sh: $summary" >&2
rm -rf "$tmp"
exit "$rc"
