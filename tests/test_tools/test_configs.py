"""Every top-level config loads through mmengine's inheritance, builds, and runs a forward pass."""
from __future__ import annotations

import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import fcos_plugin  # noqa: F401

from ..conftest import REPO

CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '*.py')))


@pytest.mark.parametrize('path', CONFIGS, ids=[osp.basename(p) for p in CONFIGS])
def test_config_builds_and_runs(path):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(path)
    assert cfg.custom_imports.imports == ['fcos_plugin']
    assert cfg.train_dataloader.dataset.type == 'LmdbCocoDataset'
    assert cfg.val_evaluator.type == 'LmdbCocoMetric'
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None  # weights are tested in the backbone tests
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        cls, reg, *rest = model._forward(torch.rand(1, 3, 128, 160))
    assert len(cls) == len(reg) == model.bbox_head.prior_generator.num_levels
    assert cls[0].shape[1] == model.bbox_head.num_classes


def test_rtmdet_demo_is_mmdets_rtmdet_tiny_with_the_stated_changes():
    """configs/rtmdet_tiny_demo.py writes mmdet's RTMDet-tiny model out; only the number of classes,
    the ImageNet init and SyncBN->BN may differ, and its optimizer and EMA are mmdet's."""
    import mmdet
    ref = Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', 'rtmdet',
                                   'rtmdet_tiny_8xb32-300e_coco.py'))
    ours = Config.fromfile(osp.join(REPO, 'configs', 'rtmdet_tiny_demo.py'))
    want = ref.model.to_dict()
    want['bbox_head']['num_classes'] = 6
    want['backbone']['init_cfg'] = None
    for part in ('backbone', 'neck', 'bbox_head'):
        want[part]['norm_cfg'] = dict(type='BN')
    assert ours.model.to_dict() == want
    assert ours.optim_wrapper.to_dict() == ref.optim_wrapper.to_dict()
    assert [h for h in ours.custom_hooks] == [h for h in ref.custom_hooks if h.type == 'EMAHook']
