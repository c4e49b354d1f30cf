"""Config mistakes stop tools/train.py, tools/test.py and tools/deploy/export_onnx.py with one line that
names the config path (or option) and what to change -- no traceback, no silently wrong result: an
unregistered ``type``, an argument a class does not take, a ``--cfg-options`` key nothing reads, a
``num_classes`` that disagrees with the dataset's classes, a checkpoint whose tensors have other shapes."""
from __future__ import annotations

import os.path as osp
import subprocess

import pytest
import torch

from ..conftest import REPO, run_tool

CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')


def _data(root: str) -> list[str]:
    return [f'{k}_dataloader.dataset.data_root={root}/' for k in ('train', 'val', 'test')] + [
        'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
        'val_dataloader.num_workers=0', 'val_dataloader.persistent_workers=False',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(run_tool(tool, *args), capture_output=True, text=True, cwd=REPO, timeout=600)


def _one_line_error(proc: subprocess.CompletedProcess, status: int = 2) -> str:
    """The run failed with ``status`` and a single ``error:`` line on stderr, no traceback."""
    assert proc.returncode == status, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory) -> dict:
    """Checkpoints (as tools/train.py writes them: state_dict + meta.dataset_meta) of the demo model built
    for 6 classes (the demo's) and for 7 classes while trained on the demo's 6."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    from fcos_plugin.datasets.demo_data import DEMO_CLASSES
    init_default_scope('mmdet')
    out = tmp_path_factory.mktemp('ckpts')
    paths = {}
    for num_classes in (6, 7):
        cfg = Config.fromfile(CFG)
        cfg.model.bbox_head.num_classes = num_classes
        cfg.model.backbone.init_cfg = None
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
        paths[num_classes] = str(out / f'classes{num_classes}.pth')
        torch.save(dict(meta=dict(dataset_meta=dict(classes=DEMO_CLASSES)), state_dict=model.state_dict()),
                   paths[num_classes])
    return paths


def test_unregistered_type_names_its_config_path(demo_packed, tmp_path):
    """Was: a 38-line KeyError traceback ending in 'EffNetX is not in the mmdet::model registry'."""
    line = _one_line_error(_run('tools/train.py', CFG, '--work-dir', str(tmp_path), '--cfg-options',
                                *_data(demo_packed), 'model.backbone.type=EffNetX'))
    assert "model.backbone.type='EffNetX'" in line and 'is not registered in mmdet::model' in line, line
    assert "did you mean 'EffNet'" in line, line  # the close registered names


def test_argument_a_class_does_not_take_is_named(demo_packed, tmp_path):
    """Was: an 18-line TypeError traceback (IterBasedTrainLoop got an unexpected keyword argument)."""
    line = _one_line_error(_run('tools/train.py', CFG, '--work-dir', str(tmp_path), '--cfg-options',
                                *_data(demo_packed), 'train_cfg.max_iter=2'))
    assert 'train_cfg.max_iter' in line and "IterBasedTrainLoop takes no argument 'max_iter'" in line, line
    assert "did you mean 'max_iters'" in line, line


@pytest.mark.parametrize('tool', ['tools/train.py', 'tools/test.py'])
def test_cfg_options_key_nothing_reads_is_refused(tool, demo_packed, checkpoints, tmp_path):
    """Was: train_cfgs.max_iters=2 merged as a new key, ignored, and all 600 iterations trained."""
    args = [CFG, checkpoints[6]] if tool.endswith('test.py') else [CFG]
    # (train_cfg.max_iters=1: should the check go, the run is short, not the schedule's 600 iterations)
    line = _one_line_error(_run(tool, *args, '--work-dir', str(tmp_path), '--cfg-options',
                                *_data(demo_packed), 'train_cfg.max_iters=1', 'train_cfgs.max_iters=2'))
    assert "'train_cfgs.max_iters'" in line and "did you mean 'train_cfg'" in line, line
    assert not osp.exists(osp.join(tmp_path, 'last_checkpoint'))



def test_cfg_options_on_a_config_variable_names_the_settings_to_change(demo_packed, tmp_path):
    """Was: ``max_iters=2`` (the demo config's variable) accepted, and all 600 iterations trained: the
    file had already copied 600 into train_cfg and the LR schedule."""
    line = _one_line_error(_run('tools/train.py', CFG, '--work-dir', str(tmp_path), '--cfg-options',
                                *_data(demo_packed), 'train_cfg.max_iters=1', 'max_iters=2'))
    assert "'max_iters' is a variable of the config file" in line and '(600)' in line, line
    assert 'train_cfg.max_iters' in line and 'param_scheduler.1.end' in line, line
    assert not osp.exists(osp.join(tmp_path, 'last_checkpoint'))

def test_train_with_num_classes_other_than_the_datasets_stops_at_once(demo_packed, tmp_path):
    """Was: an IndexError inside mmdet's match cost (5 classes), or silent training (7)."""
    line = _one_line_error(_run('tools/train.py', CFG, '--work-dir', str(tmp_path), '--cfg-options',
                                *_data(demo_packed), 'model.bbox_head.num_classes=5'))
    assert 'model.bbox_head.num_classes=5 but train_dataloader.dataset has 6 classes' in line, line
    assert 'set model.bbox_head.num_classes=6' in line, line
    assert not osp.exists(osp.join(tmp_path, 'last_checkpoint'))


def test_test_with_num_classes_other_than_the_datasets_evaluates_nothing(demo_packed, checkpoints, tmp_path):
    """Was: exit 0 with bbox mAP 0.099 instead of 0.625 (a size-mismatch warning in the log only)."""
    line = _one_line_error(_run('tools/test.py', CFG, checkpoints[6], '--work-dir', str(tmp_path),
                                '--cfg-options', *_data(demo_packed), 'model.bbox_head.num_classes=7'))
    assert 'model.bbox_head.num_classes=7 but test_dataloader.dataset has 6 classes' in line, line
    assert not osp.exists(osp.join(tmp_path, 'test_metrics.json'))


def test_checkpoint_with_other_tensor_shapes_is_refused_by_the_fit_check(demo_packed, checkpoints, tmp_path):
    """A 5-class config (a class subset, num_classes=5: consistent with its data) and the 6-class
    checkpoint: all but the class layer fit, so the old 'more than half fits' check let the class
    layer stay random."""
    from fcos_plugin.datasets.demo_data import DEMO_CLASSES
    classes = '[' + ','.join(f"'{c}'" for c in DEMO_CLASSES[:5]) + ']'
    proc = _run('tools/test.py', CFG, checkpoints[6], '--work-dir', str(tmp_path), '--cfg-options',
                *_data(demo_packed), 'model.bbox_head.num_classes=5',
                f'test_dataloader.dataset.metainfo.classes={classes}')
    line = _one_line_error(proc, status=1)
    assert f'checkpoint {checkpoints[6]} does not fit config' in line, line
    assert 'bbox_head.conv_cls.weight (6, ' in line and 'would be left random' in line, line
    assert 'trained for 6 classes' in line, line
    assert not osp.exists(osp.join(tmp_path, 'test_metrics.json'))


def test_export_refuses_num_classes_other_than_the_checkpoints_classes(checkpoints, tmp_path):
    """A checkpoint trained on the demo's 6 classes with a 7-class head (as the old tools allowed): the
    export named its classes class_0..class_6 without a word."""
    line = _one_line_error(_run('tools/deploy/export_onnx.py', CFG, checkpoints[7], '--work-dir',
                                str(tmp_path / 'onnx'), '--cfg-options', 'model.bbox_head.num_classes=7'),
                           status=1)
    assert f'model.bbox_head.num_classes=7 but checkpoint {checkpoints[7]} has 6 classes' in line, line
    assert not osp.exists(tmp_path / 'onnx' / 'end2end.onnx')

