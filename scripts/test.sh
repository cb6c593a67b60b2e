#!/usr/bin/env bash
# Sets everything up (first run) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser
exec .venv/bin/python -m pytest "$@"
