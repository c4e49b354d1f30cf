"""Deployment fixtures: seeded checkpoints (a 2-iteration demo model whose scores sit in the threshold
trap, the session's trained demo model, a 1-iteration tiny COCO model), their ONNX exports, and PyTorch
and ONNX Runtime predictions on the same normalised tensors."""
from __future__ import annotations

import copy
import glob
import os.path as osp
import subprocess

import pytest
import torch
from mmengine.config import Config

from fcos_plugin.engine import safe_checkpoint_loading

from ..conftest import REPO, run_tool

DEMO_CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
COCO_CFG = osp.join(REPO, 'configs', 'fcos_effb0.py')
BOX_ATOL = 1e-2  # px
SCORE_ATOL = 1e-4


def data_options(root: str, splits=('train', 'val', 'test')) -> list[str]:
    return [f'{s}_dataloader.dataset.data_root={root}' for s in splits]


def model_cfg(path: str, data_root: str, **overrides) -> Config:
    cfg = Config.fromfile(path)
    cfg.merge_from_dict({f'{s}_dataloader.dataset.data_root': data_root
                         for s in ('train', 'val', 'test')})
    cfg.merge_from_dict(overrides)
    return cfg


def train(cfg_path: str, data_root: str, work_dir: str, *options: str) -> str:
    """A few seeded, deterministic iterations of tools/train.py; returns the last checkpoint.

    Validation is switched off entirely (mmengine validates after the last epoch whatever
    ``val_interval`` says, and PyTorch inference is what costs minutes on 2 cores)."""
    cmd = run_tool('tools/train.py', cfg_path, '--work-dir', work_dir, '--cfg-options',
                   f'train_dataloader.dataset.data_root={data_root}', 'val_dataloader=None',
                   'val_cfg=None', 'val_evaluator=None', 'train_dataloader.num_workers=0',
                   'train_dataloader.persistent_workers=False', 'default_hooks.logger.interval=1',
                   'randomness.seed=0', 'randomness.deterministic=True', *options)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpts = sorted(glob.glob(osp.join(work_dir, '*_*.pth')), key=osp.getmtime)
    assert ckpts, f'no checkpoint in {work_dir}'
    return ckpts[-1]


def export(cfg_path: str, ckpt: str, work_dir: str, *extra: str) -> str:
    """tools/deploy/export_onnx.py; returns the model path."""
    proc = subprocess.run(run_tool('tools/deploy/export_onnx.py', '--config', cfg_path, '--ckpt', ckpt,
                                   '--onnx-name', 'fcos.onnx', '--work-dir', work_dir, *extra),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return osp.join(work_dir, 'fcos.onnx')


@pytest.fixture(scope='session')
def demo_ckpt(demo_packed, tmp_path_factory) -> str:
    """FCOS-EfficientNet-B0 (fcos_effb0_demo.py) after 2 iterations on the demo pack: weak, so its
    scores sit right where mmdet's and mmdeploy's thresholds disagree."""
    return train(DEMO_CFG, demo_packed, str(tmp_path_factory.mktemp('demo_train')),
                 'train_cfg.max_iters=2', 'train_dataloader.batch_size=4',
                 'train_dataloader.dataset.indices=8')


@pytest.fixture(scope='session')
def demo_onnx(demo_ckpt, tmp_path_factory) -> str:
    """The demo checkpoint exported with the default (dynamic) deploy config."""
    return export(DEMO_CFG, demo_ckpt, str(tmp_path_factory.mktemp('demo_onnx')))


@pytest.fixture(scope='session')
def trained_onnx(demo_trained, tmp_path_factory) -> str:
    """The session's trained demo checkpoint (tests/conftest.py ``demo_trained``) exported by the
    command line tool with the default (dynamic) deploy config."""
    return export(DEMO_CFG, demo_trained['checkpoint'], str(tmp_path_factory.mktemp('trained_onnx')))


@pytest.fixture(scope='session')
def coco_ckpt(tiny_coco_packed, tmp_path_factory) -> str:
    """fcos_effb0.py (80 classes, 512x512, EMA) after one iteration on 2 tiny COCO train images."""
    return train(COCO_CFG, tiny_coco_packed, str(tmp_path_factory.mktemp('coco_train')),
                 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=2',
                 'train_dataloader.dataset.indices=2')


@pytest.fixture(scope='session')
def coco_onnx(coco_ckpt, tiny_coco_packed, tmp_path_factory) -> str:
    """Exported in-process (the command line is tested with the demo model)."""
    from fcos_plugin.deploy import export_onnx
    paths = export_onnx(model_cfg(COCO_CFG, tiny_coco_packed), coco_ckpt,
                        str(tmp_path_factory.mktemp('coco_onnx')), onnx_name='fcos.onnx',
                        log=lambda s: None)
    return paths['onnx']


def predict_both(cfg: Config, ckpt: str, onnx_path: str, indices: int, batch_size: int):
    """PyTorch and ONNX Runtime predictions on the first ``indices`` images of the config's val set,
    from the same once-normalised tensors, and the COCO metrics of each (the config's
    ``val_evaluator``).

    Returns:
        tuple: per-image ``(pytorch, onnx)`` dicts of ``bboxes`` (K, 4) in original-image pixels,
        ``scores`` (K,), ``labels`` (K,); PyTorch metrics; ONNX metrics; the PyTorch model.
    """
    from mmdeploy.apis import build_task_processor
    from mmengine.evaluator import Evaluator

    from fcos_plugin.deploy import build_dataloader, init_scope, load_deploy_cfg, load_model_cfg
    init_scope()
    cfg = load_model_cfg(cfg)
    deploy_cfg = load_deploy_cfg(osp.join(osp.dirname(onnx_path), 'deploy_cfg.py'))
    task = build_task_processor(copy.deepcopy(cfg), deploy_cfg, 'cpu')
    with safe_checkpoint_loading(ckpt):
        torch_model = task.build_pytorch_model(ckpt)
    ort_model = task.build_backend_model([onnx_path])
    loader = build_dataloader(cfg, 'val', cfg.val_dataloader.dataset.pipeline, batch_size, indices)
    evaluators = []
    for _ in range(2):
        ev = Evaluator(copy.deepcopy(cfg.val_evaluator))
        ev.dataset_meta = loader.dataset.metainfo
        evaluators.append(ev)
    pairs = []
    for data in loader:
        data = torch_model.data_preprocessor(data, False)  # normalised once, used by both
        with torch.no_grad():
            ref = torch_model.predict(data['inputs'], copy.deepcopy(data['data_samples']))
            out = ort_model(data['inputs'], copy.deepcopy(data['data_samples']), mode='predict')
        for ev, res in zip(evaluators, (ref, out)):
            ev.process(data_samples=res, data_batch=data)
        for r, o in zip(ref, out):
            pairs.append(tuple({k: v.numpy() for k, v in s.pred_instances.to_dict().items()}
                               for s in (r, o)))
    metrics = [ev.evaluate(len(loader.dataset)) for ev in evaluators]
    return pairs, metrics[0], metrics[1], torch_model
