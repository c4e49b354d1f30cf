"""Resume is exact: fcos_effb0_demo.py trained with 2 DataLoader workers, killed with SIGKILL in the middle
of an epoch and resumed with ``--resume``, ends at the same iteration with bitwise-identical parameters
(and optimizer state) as the uninterrupted run with the same seed (deterministic CPU mode)."""
from __future__ import annotations

import os
import os.path as osp
import re
import signal
import subprocess
import time

import torch

from ..conftest import REPO, load_checkpoint_file, run_tool

CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
ITERS, SAVE_EVERY, KILL_AFTER = 12, 4, 6  # 16 training images, batch 4: an epoch is 4 iterations


def _cmd(data_root: str, work: str, *extra: str) -> list[str]:
    return run_tool('tools/train.py', CFG, '--work-dir', work, *extra, '--cfg-options',
                    *[f'{k}_dataloader.dataset.data_root={data_root}/' for k in ('train', 'val', 'test')],
                    'train_dataloader.dataset.indices=16', 'train_dataloader.batch_size=4',
                    'train_dataloader.num_workers=2', 'train_dataloader.persistent_workers=True',
                    f'train_cfg.max_iters={ITERS}', f'train_cfg.val_interval={ITERS + 1}',
                    f'param_scheduler.0.end={ITERS // 2}', f'param_scheduler.1.begin={ITERS // 2}',
                    f'param_scheduler.1.end={ITERS}', f'param_scheduler.1.T_max={ITERS // 2}',
                    f'default_hooks.checkpoint.interval={SAVE_EVERY}',
                    'default_hooks.checkpoint.save_best=None', 'default_hooks.logger.interval=1',
                    'val_dataloader=None', 'val_cfg=None', 'val_evaluator=None')


def _state(path: str) -> dict:
    ckpt = load_checkpoint_file(path)
    return dict(meta_iter=ckpt['meta']['iter'], state_dict=ckpt['state_dict'],
                optimizer=ckpt['optimizer']['state'])


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(demo_packed, tmp_path):
    ref_work, work = str(tmp_path / 'uninterrupted'), str(tmp_path / 'killed')
    proc = subprocess.run(_cmd(demo_packed, ref_work), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # the interrupted run: killed once iteration KILL_AFTER (in the second epoch, after the checkpoint
    # of iteration SAVE_EVERY) is logged, i.e. with the workers mid-epoch
    log = open(tmp_path / 'killed.log', 'w')
    victim = subprocess.Popen(_cmd(demo_packed, work), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              start_new_session=True)
    pattern = re.compile(rf'Iter\(train\)\s+\[\s*{KILL_AFTER}/{ITERS}\]')
    deadline = time.time() + 600
    while time.time() < deadline and victim.poll() is None:
        with open(tmp_path / 'killed.log') as f:
            if pattern.search(f.read()):
                break
        time.sleep(0.2)
    assert victim.poll() is None, 'the run ended before it could be killed'
    os.killpg(victim.pid, signal.SIGKILL)  # the trainer and its DataLoader workers
    victim.wait()
    log.close()
    assert not osp.exists(osp.join(work, f'iter_{ITERS}.pth'))
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert osp.basename(f.read().strip()) == f'iter_{SAVE_EVERY}.pth'

    proc = subprocess.run(_cmd(demo_packed, work, '--resume'), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert re.search(rf'resumed epoch: \d+, iter: {SAVE_EVERY}\b', out) and \
        f'Advance dataloader {SAVE_EVERY} steps' in out, out[-3000:]
    ref, got = _state(osp.join(ref_work, f'iter_{ITERS}.pth')), _state(osp.join(work, f'iter_{ITERS}.pth'))
    assert got['meta_iter'] == ref['meta_iter'] == ITERS
    assert ref['state_dict'].keys() == got['state_dict'].keys()
    differ = [k for k in ref['state_dict'] if not torch.equal(ref['state_dict'][k], got['state_dict'][k])]
    assert not differ, f'{len(differ)} tensors differ after resuming, e.g. {differ[:5]}'
    for k, s in ref['optimizer'].items():
        for name, v in s.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(got['optimizer'][k][name])), (k, name)


def test_ctrl_c_says_where_training_stopped_and_how_to_go_on(demo_packed, tmp_path):
    """SIGINT to the trainer and its DataLoader workers (what Ctrl-C in a terminal sends), mid-epoch after a
    checkpoint: exit status 130, no traceback, one line naming the iteration and the complete checkpoint
    to ``--resume`` from, which loads (it used to end in a KeyboardInterrupt traceback, status -2)."""
    work = str(tmp_path / 'work')
    out, err = open(tmp_path / 'out.log', 'w'), open(tmp_path / 'err.log', 'w')
    # SIGINT's default action restored in the child: a test run started in the background of a
    # non-interactive shell (nohup ... &) ignores SIGINT, the trainer would inherit that and finish
    run = subprocess.Popen(_cmd(demo_packed, work), stdout=out, stderr=err, cwd=REPO, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pattern = re.compile(rf'Iter\(train\)\s+\[\s*{KILL_AFTER}/{ITERS}\]')
    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None:
        if pattern.search((tmp_path / 'out.log').read_text()):
            break
        time.sleep(0.2)
    assert run.poll() is None, 'the run ended before it could be interrupted'
    os.killpg(run.pid, signal.SIGINT)
    assert run.wait(timeout=120) == 130, (tmp_path / 'err.log').read_text()[-3000:]
    out.close()
    err.close()
    stderr = (tmp_path / 'err.log').read_text()
    assert 'Traceback' not in stderr, stderr[-3000:]
    last = osp.join(work, f'iter_{SAVE_EVERY}.pth')
    expected = (rf'interrupted after ({KILL_AFTER}|{KILL_AFTER + 1}) iterations\. The last complete '
                rf'checkpoint, {re.escape(last)}, is intact and last_checkpoint points at it: '
                r'continue with --resume\.')
    assert re.fullmatch(expected, stderr.strip().splitlines()[-1]), stderr[-1000:]
    assert _state(last)['meta_iter'] == SAVE_EVERY
