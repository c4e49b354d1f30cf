"""tools/dist_test.sh with 2 CPU processes scores the session's trained demo checkpoint exactly as the
single-process validation at the end of its training did (mmengine splits the val set over the ranks,
pads it and drops the padding when it gathers the results)."""
from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys

from ..conftest import REPO


def test_two_process_test_equals_single_process_validation(demo_trained, tmp_path):
    work = str(tmp_path / 'dist_test')
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable, PORT=str(29600 + os.getpid() % 1000))
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'dist_test.sh'),
                           osp.join(REPO, 'configs', 'fcos_effb0_demo.py'), demo_trained['checkpoint'], '2',
                           '--work-dir', work, '--cfg-options',
                           f'test_dataloader.dataset.data_root={demo_trained["data_root"]}/'],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert 'Distributed training: True' in proc.stdout + proc.stderr
    assert 'GPU number: 2' in proc.stdout + proc.stderr  # mmengine's name for the world size
    with open(osp.join(work, 'test_metrics.json')) as f:
        metrics = json.load(f)
    bbox = {k: v for k, v in demo_trained['metrics'].items() if k.startswith('coco/bbox')}
    assert {k: metrics[k] for k in bbox} == bbox
