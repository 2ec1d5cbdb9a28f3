#!/usr/bin/env bash
# Installs what the tests need, then runs them all against real services:
#   Debian packages (Prometheus, Alertmanager, PostgreSQL, Java/Maven if missing), the
#   Kafka jars from Maven Central (cached), driftline with its test extras, then ruff and
#   mypy (the quality gate), then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k kafka -x (DRIFTLINE_TEST_WORKERS=0:
# no worker processes)
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

# Two workers (DRIFTLINE_TEST_WORKERS): every test that needs a real service runs on one of
# them, in order (one xdist group, see tests/conftest.py); the CPU-bound rest fills the other.
exec python3 -m pytest -n "${DRIFTLINE_TEST_WORKERS:-2}" --dist loadgroup "$@"
