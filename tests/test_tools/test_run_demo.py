"""README's main command in its reduced form (``bash tools/run_demo.sh --quick``): every stage runs and
every artefact it promises exists and is what it claims to be."""
from __future__ import annotations

import glob
import json
import os.path as osp
import subprocess

import cv2
import onnx
import pytest

from ..conftest import REPO, load_checkpoint_file

STAGES = ('install', 'data', 'flops', 'train', 'test', 'export', 'onnx', 'int8', 'report',
          'total (after install)')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    base = tmp_path_factory.mktemp('run_demo')
    work, data = str(base / 'work'), str(base / 'data')
    cmd = ['bash', osp.join(REPO, 'tools', 'run_demo.sh'), '--quick', '--work-dir', work, '--data-dir', data]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work, data, proc.stdout + proc.stderr, cmd


def test_summary_has_both_maps_params_flops_and_stage_times(quick_run):
    work, _, out, _ = quick_run
    with open(osp.join(work, 'summary.json')) as f:
        summary = json.load(f)
    for key in ('bbox_mAP', 'bbox_mAP_50'):
        assert set(summary[key]) == {'pytorch', 'onnx', 'onnx_int8'}
        assert all(isinstance(v, float) for v in summary[key].values()), summary[key]
    with open(osp.join(work, 'test', 'test_metrics.json')) as f:
        assert summary['bbox_mAP']['pytorch'] == json.load(f)['coco/bbox_mAP']
    with open(osp.join(work, 'onnx', 'test_metrics.json')) as f:
        assert summary['bbox_mAP']['onnx'] == json.load(f)['metrics']['coco/bbox_mAP']
    # int8 and the latencies are quantize_onnx.py's report: the int8 model's mAP, the float model's equal
    # to test_onnx.py's, and PyTorch / float / int8 timed on the same input
    with open(osp.splitext(summary['int8_onnx'])[0] + '_report.json') as f:
        report = json.load(f)
    assert summary['bbox_mAP']['onnx_int8'] == report['int8']['bbox_mAP']
    assert report['float']['bbox_mAP'] == summary['bbox_mAP']['onnx']
    names = (('pytorch', 'pytorch'), ('onnx', 'float'), ('onnx_int8', 'int8'))
    assert summary['latency_ms'] == {k: round(report[r]['latency_ms'], 1) for k, r in names}
    assert report['pytorch']['checkpoint'] == summary['checkpoint']
    assert summary['latency_input'] == report['latency']['input_shape'] == [1, 3, *summary['input_size']]
    assert set(summary['stage_seconds']) == set(STAGES)
    assert all(v >= 0 for v in summary['stage_seconds'].values())
    # params/FLOPs are get_flops.py's own numbers for this config and input size
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from fcos_plugin.analysis import detector_complexity
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(REPO, summary['config']))
    r = detector_complexity(MODELS.build(cfg.model), (1, 3, *summary['input_size']))
    assert summary['params_m'] == pytest.approx(r.params / 1e6, abs=5e-4)
    assert summary['gflops'] == pytest.approx(r.flops / 1e9, abs=5e-4)
    # the printed summary is the written one
    with open(osp.join(work, 'summary.md')) as f:
        md = f.read()
    assert md.strip() in out
    assert (f'| bbox mAP | {summary["bbox_mAP"]["pytorch"]:.3f} | {summary["bbox_mAP"]["onnx"]:.3f} | '
            f'{summary["bbox_mAP"]["onnx_int8"]:.3f} |') in md


def test_checkpoint_loads_and_onnx_passes_the_checker(quick_run):
    work, *_ = quick_run
    with open(osp.join(work, 'summary.json')) as f:
        summary = json.load(f)
    ckpt = load_checkpoint_file(summary['checkpoint'])
    assert any(k.startswith('bbox_head.') for k in ckpt['state_dict'])
    assert ckpt['meta']['dataset_meta']['classes'][0] == 'red_circle'
    onnx.checker.check_model(summary['onnx'])


def test_pictures_decode(quick_run):
    work, data, *_ = quick_run
    with open(osp.join(work, 'summary.json')) as f:
        pictures = json.load(f)['pictures']
    for key in ('detections', 'training_curve'):
        img = cv2.imread(pictures[key])
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, key
    shown = glob.glob(osp.join(pictures['all_detections'], '*.jpg'))
    assert len(shown) == len(glob.glob(osp.join(data, 'val2017', '*.jpg')))
    drawn = glob.glob(osp.join(pictures['onnx_detections'], '*.jpg'))
    assert len(drawn) == 4 and all(cv2.imread(p) is not None for p in drawn)
    with open(osp.join(pictures['onnx_detections'], 'detections.json')) as f:
        assert len(json.load(f)['images']) == 4


def test_rerun_reuses_data_and_training(quick_run):
    work, data, _, cmd = quick_run
    ckpt_mtime = osp.getmtime(glob.glob(osp.join(work, 'iter_*.pth'))[0])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    assert 'already generated' in out and 'train_lmdb already packed' in out
    assert osp.getmtime(glob.glob(osp.join(work, 'iter_*.pth'))[0]) == ckpt_mtime  # not retrained
