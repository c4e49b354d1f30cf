"""The worked example of docs/*/custom_dataset.md (section 5: a raccoon detector from real photos), as the
page shows it: its pack commands pack ``../shared/data/raccoon``, and its config loads, asks for one class
named ``raccoon``, is seeded, names the checkpoint the page's commands use, and builds both datasets with
the photos of each split. Seconds, no training; the data tests skip when the photos are absent."""
from __future__ import annotations

import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys

import pytest

from .conftest import REPO
from .test_docs import commands_of

DOCS = ('docs/en/custom_dataset.md', 'docs/zh_cn/custom_dataset.md')
CONFIG_FILE = 'my_configs/fcos_effb0_raccoon.py'
#: where the page's commands read the photos from (relative to the repository root, where they run); the
#: tests read them there too, or from FCOS_RACCOON
SOURCE = '../shared/data/raccoon'
RACCOON = os.environ.get('FCOS_RACCOON', osp.normpath(osp.join(REPO, SOURCE)))
#: where the page's commands write the pack (replaced by a temporary directory here)
TARGET = 'data/raccoon'


def config_block(doc: str) -> str:
    """The page's ```python block that starts with ``# my_configs/fcos_effb0_raccoon.py``."""
    with open(osp.join(REPO, doc), encoding='utf-8') as f:
        text = f.read()
    blocks = re.findall(r'^```python\n(.*?)^```', text, flags=re.M | re.S)
    found = [b for b in blocks if b.startswith(f'# {CONFIG_FILE}\n')]
    assert len(found) == 1, f'{doc}: {len(found)} ```python blocks start with "# {CONFIG_FILE}", not one'
    return found[0]


def load_config(doc: str, tmp_path):
    """The page's config as a user saves it (``my_configs/`` beside ``configs/``), loaded by mmengine."""
    from mmengine.config import Config
    (tmp_path / 'my_configs').mkdir()
    (tmp_path / 'configs').symlink_to(osp.join(REPO, 'configs'))
    path = tmp_path / CONFIG_FILE
    path.write_text(config_block(doc), encoding='utf-8')
    return Config.fromfile(str(path))


def page_commands(doc: str, script: str) -> list[list[str]]:
    """The page's commands that run ``script`` on the raccoon data, as argument lists."""
    return [shlex.split(c.text) for c in commands_of(doc) if script in c.text and 'raccoon' in c.text]


def test_both_languages_show_the_same_config():
    assert config_block(DOCS[0]) == config_block(DOCS[1])


def test_config_is_one_seeded_class_and_names_the_checkpoint_the_page_tests(tmp_path):
    cfg = load_config(DOCS[0], tmp_path)
    assert cfg.model.bbox_head.num_classes == 1
    for split in ('train', 'val', 'test'):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.metainfo.classes == ('raccoon',), split
        assert dataset.data_root == f'{TARGET}/', split
    assert cfg.randomness.seed is not None and cfg.randomness.deterministic is True
    # the schedule ends where the scheduler ends, and its last iteration is saved under the name the
    # page's test and export commands use
    max_iters = cfg.train_cfg.max_iters
    assert cfg.param_scheduler[-1].end == cfg.param_scheduler[-1].T_max == max_iters
    assert max_iters % cfg.default_hooks.checkpoint.interval == 0
    named = {a for doc in DOCS for script in ('tools/test.py', 'tools/deploy/export_onnx.py')
             for argv in page_commands(doc, script) for a in argv if a.endswith('.pth')}
    assert named == {f'work_dirs/fcos_effb0_raccoon/iter_{max_iters}.pth'}


@pytest.fixture(scope='module')
def raccoon_packed(tmp_path_factory) -> str:
    """../shared/data/raccoon packed by the page's own two packer commands (target: a temporary dir)."""
    if not osp.isfile(osp.join(RACCOON, 'annotations', 'instances_val2017.json')):
        pytest.skip(f'the raccoon photos are not at {RACCOON} (the tutorial reads {SOURCE} from the '
                    'repository root; set FCOS_RACCOON to read them elsewhere)')
    out = str(tmp_path_factory.mktemp('raccoon') / 'data' / 'raccoon')
    commands = page_commands(DOCS[0], 'tools/datasets/mscoco_packer.py')
    assert [argv[argv.index('--split-name') + 1] for argv in commands] == ['train', 'val']
    for argv in commands:
        assert argv[0] == 'python' and argv[argv.index('--src-data-dir') + 1] == SOURCE
        assert argv[argv.index('--target-data-dir') + 1] == TARGET
        argv = [sys.executable, *argv[1:]]
        argv[argv.index('--src-data-dir') + 1] = RACCOON
        argv[argv.index('--target-data-dir') + 1] = out
        proc = subprocess.run(argv + ['--no-progress'], capture_output=True, text=True, cwd=REPO,
                              env=dict(os.environ, PYTHONWARNINGS='ignore'))
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert 'no problems found' in proc.stdout, proc.stdout
    return out


@pytest.mark.parametrize('split', ['train', 'val'])
def test_page_config_builds_the_packed_photos(raccoon_packed, tmp_path, split):
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    with open(osp.join(RACCOON, 'annotations', f'instances_{split}2017.json')) as f:
        source = json.load(f)
    cfg = load_config(DOCS[0], tmp_path)
    ds_cfg = cfg[f'{split}_dataloader'].dataset
    ds_cfg.data_root = raccoon_packed + '/'
    init_default_scope('mmdet')
    dataset = DATASETS.build(ds_cfg)
    assert dataset.metainfo['classes'] == ('raccoon',)
    # every photo (each has a raccoon, so the training filter keeps them all) and every box
    assert len(dataset) == len(source['images']) >= 40
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    assert sum(len(info['instances']) for info in infos) == len(source['annotations'])
    assert {(info['width'], info['height']) for info in infos} == {
        (im['width'], im['height']) for im in source['images']}
    assert all(inst['bbox_label'] == 0 for info in infos for inst in info['instances'])
