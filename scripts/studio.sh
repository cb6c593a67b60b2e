#!/usr/bin/env bash
# Sets everything up (first run) and starts the studio on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python app.py "$@"
