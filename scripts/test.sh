#!/usr/bin/env bash
# Installs what the tests need, then runs them all against real services:
#   Debian packages (Prometheus, Alertmanager, PostgreSQL, Java/Maven if missing), the
#   Kafka jars from Maven Central (cached), driftline with its test extras, then pytest.
# Extra arguments go to pytest, e.g. scripts/test.sh -k kafka -x
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
exec python3 -m pytest "$@"
