#!/usr/bin/env bash
# The main job on the built-in demo data, from a fresh checkout:
#   install -> generate demo data -> pack it into LMDB -> train -> test -> pictures.
# Usage: bash tools/run_demo.sh [CONFIG] [extra tools/train.py args...]
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/fcos_effb0_demo.py}
shift || true
NAME=$(basename "$CONFIG" .py)
WORK_DIR=${WORK_DIR:-work_dirs/$NAME}

bash tools/install.sh
PY=.venv/bin/python
if [ ! -d data/demo/train2017 ]; then
  $PY tools/datasets/make_demo_dataset.py --out-dir data/demo
fi
for split in train val; do
  if [ ! -d "data/demo/${split}_lmdb" ]; then
    $PY tools/datasets/mscoco_packer.py --src-data-dir data/demo --target-data-dir data/demo \
      --split-name "$split" --pack-type lmdb
  fi
done
$PY tools/analysis_tools/browse_dataset.py "$CONFIG" --output-dir "$WORK_DIR/browse" --num 8
$PY tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
CKPT=$(ls -t "$WORK_DIR"/epoch_*.pth | head -n 1)
$PY tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR" --show-dir show
echo "done: checkpoint $CKPT, metrics $WORK_DIR/test_metrics.json, pictures under $WORK_DIR"
