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

# With no arguments (CI): two pytest processes side by side, each with its own temporary
# folder. tests/integration (real services, mostly waiting on them) runs in order in one; the
# CPU-bound unit tests run in the other, their output printed when both are done. With
# arguments: one pytest process, as asked.
if [[ $# -gt 0 || "${DRIFTLINE_TEST_SERIAL:-0}" == 1 ]]; then
  exec python3 -m pytest "$@"
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/driftline-tests.XXXXXX")
python3 -m pytest -p no:cacheprovider --basetemp "$tmp/unit" --ignore=tests/integration \
  >"$tmp/unit.log" 2>&1 &
unit_pid=$!
set +e
python3 -m pytest -p no:cacheprovider --basetemp "$tmp/integration" tests/integration
integration_rc=$?
wait "$unit_pid"
unit_rc=$?
set -e
echo "=================== unit tests (run beside the integration tests) ==================="
cat "$tmp/unit.log"
echo "test.sh: integration tests exit $integration_rc, unit tests exit $unit_rc" >&2
rm -rf "$tmp"
(( integration_rc == 0 && unit_rc == 0 ))
