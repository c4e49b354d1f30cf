"""Read-only or full output directories (issue 16 item 8): export_onnx.py --work-dir on a read-only path
and tools/test.py on a full disk stop with one line naming the directory and what to do, exit non-zero,
nothing partial left (were: raw OSError tracebacks, and a 0-byte test_metrics.json). Both use a real
tmpfs (read-only, or with no inode left for test_metrics.json): root writes through permission bits."""
from __future__ import annotations

import os
import os.path as osp
import subprocess

from ..conftest import REPO, run_tool, tmpfs
from .test_infer_streaming import CFG, save_random_checkpoint


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stdout[-2000:] + proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_export_onnx_to_a_read_only_work_dir(tmp_path):
    ckpt = save_random_checkpoint(str(tmp_path / 'random.pth'))
    with tmpfs(str(tmp_path / 'ro'), 'ro,size=1m') as ro:
        for work_dir in (ro, osp.join(ro, 'sub')):
            proc = subprocess.run(run_tool('tools/deploy/export_onnx.py', CFG, ckpt, '--work-dir', work_dir),
                                  capture_output=True, text=True, cwd=REPO, timeout=600)
            line = _one_error_line(proc)
            assert line.startswith(f'error: cannot write to {work_dir} (') and 'writable --work-dir' in line
            assert os.listdir(ro) == []


def test_test_tool_on_a_full_disk_leaves_no_partial_metrics(demo_packed, tmp_path):
    """7 inodes: the config dump, the run's log directory and files fit (measured: 8 with the metrics),
    test_metrics.json does not. Any earlier write failing would give the same one line."""
    ckpt = save_random_checkpoint(str(tmp_path / 'random.pth'))
    with tmpfs(str(tmp_path / 'full'), 'size=8m,nr_inodes=7') as full:
        proc = subprocess.run(run_tool('tools/test.py', CFG, ckpt, '--work-dir', full, '--cfg-options',
                                       f'test_dataloader.dataset.data_root={demo_packed}/',
                                       'test_dataloader.dataset.indices=2'),
                              capture_output=True, text=True, cwd=REPO, timeout=600)
        line = _one_error_line(proc)
        assert f'no space left on {full}' in line and '--work-dir' in line, line
        left = os.listdir(full)
        assert 'test_metrics.json' not in left and not [n for n in left if n.startswith('.')], left
