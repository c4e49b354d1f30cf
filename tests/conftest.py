"""Shared fixtures: the real tiny COCO subset, packed once per session, and a small demo pack."""
from __future__ import annotations

import os
import os.path as osp
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_COCO = os.environ.get('FCOS_TINY_COCO', osp.join(REPO, '..', 'shared', 'data', 'tiny_coco'))


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
