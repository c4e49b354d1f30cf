"""The whole detector learns: from Lite0 ImageNet weights, fcos_effb0_demo fits a few demo images to
AP50 >= 0.9 within a few CPU minutes (tests/configs/effb0_overfit.py), through tools/train.py."""
from __future__ import annotations

import glob
import json
import os.path as osp
import subprocess

from ..conftest import REPO, run_tool


def test_fits_a_few_demo_images_from_lite0_weights(demo_packed, tmp_path):
    work = str(tmp_path)
    proc = subprocess.run(run_tool('tools/train.py', osp.join(REPO, 'tests', 'configs', 'effb0_overfit.py'),
                                   '--work-dir', work, '--cfg-options',
                                   f'train_dataloader.dataset.data_root={demo_packed}',
                                   f'val_dataloader.dataset.data_root={demo_packed}'),
                          capture_output=True, text=True, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'loaded 288 of the 296 tensors' in out  # the ImageNet weights really were loaded
    scalars = sorted(glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json')))[-1]
    with open(scalars) as f:
        records = [json.loads(line) for line in f]
    final = [r for r in records if 'coco/bbox_mAP_50' in r][-1]
    assert final['coco/bbox_mAP_50'] >= 0.9, final
    losses = [r['loss'] for r in records if 'loss' in r]
    assert losses[-1] < 0.5 * losses[0]
