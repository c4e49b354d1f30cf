"""QAT fixtures: a short QAT fine-tune of the session's trained demo checkpoint (tests/conftest.py
``demo_trained``) by tools/train.py with configs/fcos_effb0_demo_qat.py, and its int8 ONNX export by
tools/deploy/export_onnx.py."""
from __future__ import annotations

import os.path as osp

import pytest

from ..conftest import REPO
from ..test_deploy.conftest import export, train

DEMO_CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
QAT_CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo_qat.py')
QAT_ITERS = 3


@pytest.fixture(scope='session')
def qat_trained(demo_trained, tmp_path_factory) -> dict:
    """``QAT_ITERS`` seeded QAT iterations (batch 4) from the trained float checkpoint, ranges
    calibrated on 8 train images first."""
    work = str(tmp_path_factory.mktemp('qat_train'))
    ckpt = train(QAT_CFG, demo_trained['data_root'], work, f'load_from={demo_trained["checkpoint"]}',
                 f'train_cfg.max_iters={QAT_ITERS}', 'train_dataloader.batch_size=4',
                 'custom_hooks.1.num_images=8', 'custom_hooks.1.batch_size=4')
    return dict(data_root=demo_trained['data_root'], work_dir=work, checkpoint=ckpt,
                float_checkpoint=demo_trained['checkpoint'])


@pytest.fixture(scope='session')
def qat_onnx(qat_trained, tmp_path_factory) -> str:
    """The QAT checkpoint exported (dynamic shapes, the default deploy config) as a QDQ int8 model."""
    return export(QAT_CFG, qat_trained['checkpoint'], str(tmp_path_factory.mktemp('qat_onnx')),
                  '--cfg-options', *[f'{s}_dataloader.dataset.data_root={qat_trained["data_root"]}'
                                     for s in ('train', 'val', 'test')])

