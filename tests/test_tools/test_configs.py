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
    assert len(cls) == len(reg) == len(model.bbox_head.strides)
    assert cls[0].shape[1] == model.bbox_head.num_classes
