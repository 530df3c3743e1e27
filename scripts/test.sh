#!/usr/bin/env bash
# Set up a fresh machine and run the linter and the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
.venv/bin/ruff check src tests bench
export CTXRAY_NO_PROGRESS=1
.venv/bin/python -m pytest -n 2 -q "$@"
