#!/usr/bin/env bash
# The main job on the built-in demo data, from a fresh checkout (README's first command):
#   install -> generate + pack the demo data -> params/FLOPs -> train -> test the best checkpoint
#   -> export ONNX through MMDeploy -> evaluate and run the ONNX model -> pictures and a summary.
# Usage: bash tools/run_demo.sh [--fresh] [--quick] [--config CFG] [--work-dir DIR] [--data-dir DIR]
# Rerunning reuses what is done (packages, data, a finished or interrupted training); --fresh retrains.
# The stages and options are documented in tools/run_demo.py.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS=0
bash tools/install.sh
exec .venv/bin/python tools/run_demo.py --install-seconds "$SECONDS" "$@"
