#!/usr/bin/env bash
# Set everything up (test extras, haproxy, cloud-init, shellcheck, chromium), lint, run the tests.
# Extra arguments go to pytest (e.g. -k variant).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
