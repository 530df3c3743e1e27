#!/usr/bin/env bash
# Set up a fresh machine and run the demo: the whole pipeline on the synthetic chest world.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ctxray demo --out "${1:-demo_out}"
