"""DataEpochIterBasedTrainLoop: mmengine's IterBasedTrainLoop's batches, without its warning and sleep."""
from __future__ import annotations

import hashlib
import logging
import os.path as osp

from mmengine.config import Config
from mmengine.runner import Runner

import fcos_plugin  # noqa: F401

from ..conftest import REPO

STOCK_WARNING = 'Reach the end of the dataloader'


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _draw(data_root: str, work_dir: str, loop_type: str, steps: int) -> tuple[list, list[str]]:
    """``steps`` batches from the demo config's train loop of type ``loop_type`` (seed 0,
    deterministic, the config's 2 persistent workers): per batch the image ids, the flips and a
    digest of the augmented pixels; and what the loop logged."""
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = data_root + '/'
    cfg.train_cfg.type = loop_type
    cfg.model.backbone.init_cfg = None
    cfg.work_dir = work_dir
    cfg.experiment_name = f'loop_{loop_type}'
    runner = Runner.from_cfg(cfg)
    lines = _Lines()
    runner.logger.addHandler(lines)
    try:
        loop = runner.train_loop
        batches = []
        for _ in range(steps):
            data = next(loop.dataloader_iterator)
            samples = data['data_samples']
            pixels = hashlib.sha1(b''.join(img.numpy().tobytes() for img in data['inputs'])).hexdigest()
            batches.append(([s.img_id for s in samples], [s.flip for s in samples], pixels))
    finally:
        runner.logger.removeHandler(lines)
    return batches, lines.lines


def test_same_batches_as_mmengines_loop_without_the_warning(demo_packed, tmp_path):
    """48 train images in batches of 8: 16 draws cross two restarts of the data. The plugin's loop
    must give exactly the batches (order, flips, augmented pixels) of mmengine's IterBasedTrainLoop
    -- so seeded runs keep their numbers -- and say INFO where mmengine warns."""
    steps = 16
    stock, stock_log = _draw(demo_packed, str(tmp_path / 'stock'), 'IterBasedTrainLoop', steps)
    ours, our_log = _draw(demo_packed, str(tmp_path / 'ours'), 'DataEpochIterBasedTrainLoop', steps)
    assert sum(STOCK_WARNING in line for line in stock_log) == 2, stock_log  # the need: 2 restarts
    assert ours == stock
    assert not any(STOCK_WARNING in line for line in our_log), our_log
    begins = [line for line in our_log if 'of the data begins' in line]
    assert len(begins) == 2 and 'set_epoch(1)' in begins[0] and 'set_epoch(2)' in begins[1], our_log


def test_the_demo_config_uses_it():
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    assert cfg.train_cfg.type == 'DataEpochIterBasedTrainLoop'


def test_the_shared_training_run_restarts_its_data_without_the_warning(demo_trained):
    """tools/train.py on the demo config (100 iterations over 160 images): the data starts again
    several times, each time one INFO line, never mmengine's warning."""
    out = demo_trained['output']
    assert STOCK_WARNING not in out
    assert out.count('of the data begins') >= 3, out[-2000:]
