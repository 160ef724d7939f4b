#!/usr/bin/env bash
# Set everything up, then run the quick sweep of all four stacks on the local backend.
# Extra arguments go to `python -m experiments run` (e.g. --variants micro,scale-out).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh run
exec .venv/bin/python -m experiments run --backend local --profile quick "$@"
