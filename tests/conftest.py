"""Shared fixtures: the real tiny COCO subset, packed once per session, and a small demo pack."""
from __future__ import annotations

import contextlib
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_COCO = os.environ.get('FCOS_TINY_COCO', osp.join(REPO, '..', 'shared', 'data', 'tiny_coco'))


#: Fixtures that train, export or pack for minutes: a test that uses one is marked ``slow``.
SLOW_FIXTURES = frozenset({'demo_trained', 'trained_onnx', 'demo_ckpt', 'demo_onnx', 'coco_ckpt', 'coco_onnx',
                           'tiny_coco_packed', 'qat_trained', 'qat_onnx', 'quick_run'})


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: trains, exports or runs the tools end to end (seconds to '
                            'minutes each); `pytest -m "not slow"` is the fast inner loop')


def _slow_tests() -> set[str]:
    """The tests ``tests/slow_tests.txt`` names (``path::name``, written by ``tests/slow_tests.py``)."""
    path = osp.join(osp.dirname(__file__), 'slow_tests.txt')
    if not osp.isfile(path):
        return set()
    with open(path) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith('#')}


def pytest_collection_modifyitems(config, items):
    slow = _slow_tests()
    for item in items:
        name = osp.relpath(str(item.path), REPO) + '::' + item.name.split('[', 1)[0]
        if item.cls is not None:
            name = osp.relpath(str(item.path), REPO) + f'::{item.cls.__name__}::' + item.name.split('[', 1)[0]
        if SLOW_FIXTURES & set(getattr(item, 'fixturenames', ())) or name in slow:
            item.add_marker(pytest.mark.slow)


@contextlib.contextmanager
def tmpfs(path: str, options: str):
    """A small tmpfs mounted at ``path`` (root only; skips otherwise): a real read-only or full file
    system (``options`` e.g. ``'ro,size=1m'``, ``'size=12m'``, ``'nr_inodes=7'``), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip('mounting a small tmpfs needs root')
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', path], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f'cannot mount a tmpfs: {proc.stderr.strip()}')
    try:
        yield path
    finally:
        if subprocess.run(['umount', path], capture_output=True).returncode != 0:
            subprocess.run(['umount', '-l', path], capture_output=True)


def load_checkpoint_file(path: str) -> dict:
    """A checkpoint the tools saved, read as the tools read it (weights-only, mmengine's objects allowed
    by :func:`fcos_plugin.engine.safe_checkpoint_loading`)."""
    import torch

    from fcos_plugin.engine import safe_checkpoint_loading
    with safe_checkpoint_loading(path):
        return torch.load(path, map_location='cpu', weights_only=True)


def run_tool(*args: str) -> list[str]:
    """The command line for one of the repository's tools, run with this interpreter."""
    return [sys.executable, osp.join(REPO, args[0]), *args[1:]]


@pytest.fixture(scope='session')
def tiny_coco() -> str:
    if not osp.isfile(osp.join(TINY_COCO, 'annotations', 'instances_val2017.json')):
        pytest.skip(f'tiny_coco not found at {TINY_COCO} (set FCOS_TINY_COCO)')
    return osp.abspath(TINY_COCO)


@pytest.fixture(scope='session')
def tiny_coco_packed(tiny_coco, tmp_path_factory) -> str:
    """tiny_coco train and val packed into LMDB (boxes and segmentations)."""
    from fcos_plugin.datasets import pack_coco
    out = str(tmp_path_factory.mktemp('tiny_coco_lmdb'))
    for split in ('train', 'val'):
        pack_coco(tiny_coco, out, split, progress=False, with_segmentation=True, log=lambda s: None)
    return out


@pytest.fixture(scope='session')
def demo_packed(tmp_path_factory) -> str:
    """A small built-in demo dataset, generated and packed: DIR/{train,val}_lmdb."""
    from fcos_plugin.datasets import pack_coco
    from fcos_plugin.datasets.demo_data import make_demo_dataset
    root = str(tmp_path_factory.mktemp('demo'))
    make_demo_dataset(root, num_train=48, num_val=16, seed=0)
    for split in ('train', 'val'):
        pack_coco(root, root, split, progress=False, log=lambda s: None)
    return root


#: The seeded short training every learning/deploy check shares (one per test session).
LEARN_ITERS = 100
LEARN_DATA = dict(num_train=160, num_val=40)


@pytest.fixture(scope='session')
def demo_trained(tmp_path_factory) -> dict:
    """fcos_effb0_demo.py as shipped (Lite0 weights, AdamW schedule, seed 0, deterministic), trained
    ``LEARN_ITERS`` iterations of 8 images by tools/train.py on a 160/40-image demo pack, validated at
    the end. Returns ``data_root``, ``work_dir``, ``checkpoint`` and the final val ``metrics``."""
    import glob
    import json
    import subprocess

    from fcos_plugin.datasets import pack_coco
    from fcos_plugin.datasets.demo_data import make_demo_dataset
    root = str(tmp_path_factory.mktemp('demo_learn'))
    make_demo_dataset(root, seed=0, **LEARN_DATA)
    for split in ('train', 'val'):
        pack_coco(root, root, split, progress=False, log=lambda s: None)
    work = osp.join(root, 'work')
    opts = [f'{k}_dataloader.dataset.data_root={root}/' for k in ('train', 'val', 'test')]
    opts += [f'train_cfg.max_iters={LEARN_ITERS}', f'train_cfg.val_interval={LEARN_ITERS}',
             f'param_scheduler.1.end={LEARN_ITERS}', f'param_scheduler.1.T_max={LEARN_ITERS}',
             'default_hooks.checkpoint.save_best=None']
    proc = subprocess.run(run_tool('tools/train.py', osp.join(REPO, 'configs', 'fcos_effb0_demo.py'),
                                   '--work-dir', work, '--cfg-options', *opts),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logs = sorted(glob.glob(osp.join(work, '2*', 'vis_data', 'scalars.json')))
    with open(logs[-1]) as f:
        records = [json.loads(line) for line in f]
    metrics = [r for r in records if 'coco/bbox_mAP' in r][-1]
    return dict(data_root=root, work_dir=work, checkpoint=osp.join(work, f'iter_{LEARN_ITERS}.pth'),
                metrics=metrics, log=records, output=proc.stdout + proc.stderr)
