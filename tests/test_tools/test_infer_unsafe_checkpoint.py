"""tools/infer.py refuses a checkpoint that would run code when unpickled with one clean line naming the
file and the refused global (was: a raw UnsafeCheckpointError traceback whose "Details" were torch's
first line, ANSI escape codes included, without the refused object)."""
from __future__ import annotations

import os
import os.path as osp
import subprocess

import cv2
import numpy as np
import torch

from ..conftest import REPO, run_tool

CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')


def test_code_running_checkpoint_is_refused_in_one_line(tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    ckpt = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': Payload()}, ckpt)
    image = str(tmp_path / 'img.jpg')
    cv2.imwrite(image, np.full((64, 64, 3), 128, np.uint8))
    proc = subprocess.run(run_tool('tools/infer.py', image, CFG, ckpt, '--out-dir', str(tmp_path / 'out')),
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr and '\x1b[' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f'refusing to load checkpoint {ckpt}' in errors[0], errors[0]
    assert f'the global {os.system.__module__}.system' in errors[0], errors[0]
    assert not marker.exists()
