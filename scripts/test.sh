#!/usr/bin/env bash
# Bootstrap .venv (if missing), install the project with its test extras, run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# The status page's browser test drives Debian's Chromium (never `playwright install`).
if [ "${CI:-}" = "true" ] && [ ! -x /usr/bin/chromium ]; then
    echo "== installing chromium for the status page test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi
echo "== import contracts"
.venv/bin/lint-imports
echo "== types (mypy --strict on pure modules and config)"
.venv/bin/mypy
echo "== tests"
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "pytest collected no tests: failing on purpose" >&2
    exit 1
fi
exit "$code"
