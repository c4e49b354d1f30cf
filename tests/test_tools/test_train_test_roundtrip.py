"""tools/train.py -> tools/test.py -> browse_dataset.py on the demo LMDB with mmdet's own FCOS-R18."""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
import subprocess

import numpy as np

from ..conftest import REPO, run_tool

CFG = osp.join(REPO, 'tests', 'configs', 'fcos_r18_epochs.py')


def data_opts(root: str) -> list[str]:
    return [f'{k}_dataloader.dataset.data_root={root}' for k in ('train', 'val', 'test')]


def read_losses(work_dir: str) -> list[float]:
    logs = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    assert logs, f'no scalars.json under {work_dir}'
    with open(sorted(logs)[-1]) as f:
        return [json.loads(line)['loss'] for line in f if '"loss"' in line]


def read_val_metrics(work_dir: str) -> list[dict]:
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    with open(logs[0]) as f:  # the training run's log (tools/test.py writes its own later)
        return [r for r in map(json.loads, f) if 'coco/bbox_mAP' in r]


def _bbox(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k.startswith('coco/bbox')}


def coco_metric_of(preds_pkl: str, data_root: str) -> dict:
    """mmdet's file-based CocoMetric on tools/test.py's ``--out`` dump (the reference for ours)."""
    import pickle

    from mmdet.evaluation import CocoMetric
    from mmengine.logging import MMLogger
    MMLogger.get_instance('coco_reference')
    with open(preds_pkl, 'rb') as f:
        preds = pickle.load(f)
    ann = osp.join(data_root, 'annotations', 'instances_val2017.json')
    with open(ann) as f:
        classes = tuple(c['name'] for c in json.load(f)['categories'])
    metric = CocoMetric(ann_file=ann, metric='bbox')
    metric.dataset_meta = dict(classes=classes)
    metric.process({}, preds)
    return metric.evaluate(len(preds))  # keys prefixed 'coco/' as ours


def test_train_then_test_on_demo_lmdb(demo_packed, tmp_path):
    work = str(tmp_path / 'work')
    proc = subprocess.run(run_tool('tools/train.py', CFG, '--work-dir', work, '--cfg-options',
                                   *data_opts(demo_packed), 'train_cfg.max_epochs=6',
                                   'train_cfg.val_interval=6', 'default_hooks.logger.interval=1',
                                   'train_dataloader.batch_size=4', 'randomness.seed=0',
                                   'randomness.deterministic=True'),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = read_losses(work)
    assert len(losses) >= 20
    k = len(losses) // 4
    assert np.mean(losses[-k:]) < 0.85 * np.mean(losses[:k]), losses

    ckpt = osp.join(work, 'epoch_6.pth')
    proc = subprocess.run(run_tool('tools/test.py', CFG, ckpt, '--work-dir', work, '--show-dir', 'show',
                                   '--out', osp.join(work, 'preds.pkl'), '--cfg-options',
                                   *data_opts(demo_packed)),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(osp.join(work, 'test_metrics.json')) as f:
        metrics = json.load(f)
    # the same numbers as the validation after the last epoch (same checkpoint, same images) ...
    assert _bbox(metrics) == _bbox(read_val_metrics(work)[-1])
    # ... and as mmdet's CocoMetric scoring the dumped predictions against the demo's COCO json
    assert _bbox(metrics) == _bbox(coco_metric_of(osp.join(work, 'preds.pkl'), demo_packed))
    assert metrics['coco/bbox_mAP_50'] > 0  # the 6-epoch model detects something
    shown = glob.glob(osp.join(work, '*', 'show', '*.jpg'))
    assert len(shown) == 16  # every val image drawn, named after its original file


def test_browse_dataset_draws_lmdb_samples(demo_packed, tmp_path):
    out = str(tmp_path / 'browse')
    proc = subprocess.run(run_tool('tools/analysis_tools/browse_dataset.py', CFG, '--output-dir', out,
                                   '--num', '5', '--cfg-options', *data_opts(demo_packed)),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(os.listdir(out))
    assert len(files) == 5 and all(f.endswith('.jpg') for f in files)


def test_effb0_demo_train_then_test(demo_packed, tmp_path):
    """The EfficientNet-FCOS demo config end to end: tools/train.py then tools/test.py."""
    cfg = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
    work = str(tmp_path / 'work')
    small = ['train_dataloader.dataset.indices=8', 'test_dataloader.dataset.indices=8',
             'val_dataloader.dataset.indices=8', 'train_dataloader.batch_size=4']
    proc = subprocess.run(run_tool('tools/train.py', cfg, '--work-dir', work, '--cfg-options',
                                   *data_opts(demo_packed), *small, 'train_cfg.max_iters=4',
                                   'train_cfg.val_interval=4', 'model.test_cfg.score_thr=0.0', '--amp'),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '--amp needs a CUDA device; training in fp32' in proc.stderr  # this machine has no GPU
    proc = subprocess.run(run_tool('tools/test.py', cfg, osp.join(work, 'iter_4.pth'), '--work-dir',
                                   work, '--cfg-options', *data_opts(demo_packed), *small,
                                   'model.test_cfg.score_thr=0.0'),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(osp.join(work, 'test_metrics.json')) as f:
        metrics = json.load(f)
    # the checkpoint tools/test.py loaded is the model the last validation scored (demo config: seeded)
    assert _bbox(metrics) == _bbox(read_val_metrics(work)[-1])
