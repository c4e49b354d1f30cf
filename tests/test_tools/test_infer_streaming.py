"""tools/infer.py streams (issue 16 item 7): a truncated JPEG in the middle is named on one line and
skipped, the images after it still get results, and what was written before a later failure stays (was: a
20-line traceback at the truncated JPEG, nothing after it). Memory on big photos is measured by
benchmarks/bench_infer_memory.py, not here."""
from __future__ import annotations

import json
import os.path as osp
import subprocess

import cv2
import numpy as np
import pytest
import torch

from ..conftest import REPO, run_tool

CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')


def save_random_checkpoint(path: str) -> str:
    """The demo model, randomly initialised (seed 0), saved as tools/train.py saves checkpoints (state_dict
    and meta.dataset_meta): no training needed to test what the tools do with their inputs and outputs."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    from fcos_plugin.datasets.demo_data import DEMO_CLASSES
    init_default_scope('mmdet')
    cfg = Config.fromfile(CFG)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save(dict(meta=dict(dataset_meta=dict(classes=DEMO_CLASSES)), state_dict=model.state_dict()), path)
    return path


@pytest.fixture(scope='module')
def random_ckpt(tmp_path_factory) -> str:
    return save_random_checkpoint(str(tmp_path_factory.mktemp('ckpt') / 'random.pth'))


def test_truncated_jpeg_is_skipped_and_later_results_are_kept(random_ckpt, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / 'in'
    src.mkdir()
    for name in ('a', 'b', 'c', 'd'):
        cv2.imwrite(str(src / f'{name}.jpg'), rng.integers(0, 255, (96, 128, 3), np.uint8))
    data = (src / 'b.jpg').read_bytes()
    (src / 'b.jpg').write_bytes(data[:len(data) // 2])  # truncated in the middle of the scan
    out = tmp_path / 'out'
    (out / 'vis' / 'd.jpg').mkdir(parents=True)  # the last picture cannot be written: a later failure
    proc = subprocess.run(run_tool('tools/infer.py', str(src), CFG, random_ckpt, '--out-dir', str(out)),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 2 and proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert errors[0].startswith(f'error: {src / "b.jpg"}: not a decodable image') and 'skipped' in errors[0]
    assert f'cannot write to {out}' in errors[1] and '2 image(s) written before it' in errors[1], errors[1]
    for name in ('a', 'c'):  # before and after the truncated one: complete results
        with open(out / 'preds' / f'{name}.json') as f:
            pred = json.load(f)
        assert set(pred) == {'labels', 'scores', 'bboxes'} and len(pred['labels']) == len(pred['bboxes'])
        assert cv2.imread(str(out / 'vis' / f'{name}.jpg')).shape == (96, 128, 3)
    assert not (out / 'preds' / 'b.json').exists()
    assert not [p for p in (out / 'vis').iterdir() if p.name.startswith('.')]  # no temporary file left
