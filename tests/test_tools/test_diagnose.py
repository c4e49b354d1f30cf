"""benchmarks/diagnose_demo.py on the session's trained demo run: its numbers are the ones the tools it
wraps give (tools/test.py's metrics), its breakdown accounts for every confident detection and agrees
with mmdet's confusion matrix on which of them lie on no object, and its pictures decode."""
from __future__ import annotations

import json
import os.path as osp
import pickle
import subprocess

import cv2
import numpy as np

from fcos_plugin.analysis.reports import ERROR_KINDS

from ..conftest import REPO, run_tool


def test_diagnosis_agrees_with_the_tools_it_wraps(demo_trained, tmp_path):
    out = str(tmp_path / 'diagnosis')
    proc = subprocess.run(run_tool('benchmarks/diagnose_demo.py', demo_trained['work_dir'], '--data-root',
                                   demo_trained['data_root'] + '/', '--score-thr', '0.3', '0.5',
                                   '--out-dir', out),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with open(osp.join(out, 'diagnosis.json')) as f:
        report = json.load(f)
    bbox = {k: v for k, v in demo_trained['metrics'].items() if k.startswith('coco/bbox')}
    assert {k: report['metrics'][k] for k in bbox} == bbox  # the checkpoint the training validated
    with open(osp.join(out, 'preds.pkl'), 'rb') as f:
        preds = pickle.load(f)
    for thr in ('0.3', '0.5'):
        cm = np.array(report['confusion_matrix'][thr])
        confident = sum(int((p['pred_instances']['scores'] >= float(thr)).sum()) for p in preds)
        errors = report['detections'][thr]
        assert sum(errors[k] for k in ERROR_KINDS) == confident > 0
        # mmdet's background row: confident detections with IoU < 0.5 with every object
        assert cm[-1].sum() == errors['poor_box'] + errors['background']
        assert cv2.imread(osp.join(out, f'confusion_matrix_{thr}.png')) is not None
