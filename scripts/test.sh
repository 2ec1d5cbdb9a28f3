#!/usr/bin/env bash
# Installs what the tests need, then runs them all against real services:
#   Debian packages (Prometheus, Alertmanager, PostgreSQL, Java/Maven if missing), the
#   Kafka jars from Maven Central (cached), driftline with its test extras, then ruff and
#   mypy (the quality gate), then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k kafka -x
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

exec python3 -m pytest "$@"
