#!/usr/bin/env bash
# Create .venv with everything the project needs (CPU torch pinned by constraints.txt).
#   ./setup.sh          runtime: apps, training, tools
#   ./setup.sh --dev    + test dependencies (pytest, diffusers/transformers as independent references,
#                         Playwright) and Debian's Chromium for the browser tests (when run as root)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
requirements=requirements.txt
[[ "${1:-}" == "--dev" ]] && requirements=requirements-dev.txt

[[ -x .venv/bin/python ]] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -r "$requirements"
# torchvision/timm/open_clip break this CPU torch and everything that imports it (see README).
if .venv/bin/python -m pip show -q torchvision 2>/dev/null; then
    echo "error: torchvision is installed in .venv; remove it: .venv/bin/pip uninstall -y torchvision" >&2
    exit 1
fi

if [[ "$requirements" == requirements-dev.txt ]] && ! command -v chromium >/dev/null; then
    if [[ $(id -u) == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "note: Chromium is not installed; browser tests will be skipped (apt-get install chromium)" >&2
    fi
fi
echo "setup done: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')"
