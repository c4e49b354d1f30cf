"""Non-finite training is stopped before it is saved: with a huge learning rate the gradient, the weights
and BN's running statistics turn non-finite a step or more before the loss does. StopOnNonFiniteLossHook
(default_hooks.check_loss) checks the weights after each step and before every checkpoint write, so no
checkpoint holds NaN/Inf, ``last_checkpoint`` points at a finite one and the message names it."""
from __future__ import annotations

import glob
import os.path as osp
import subprocess

import pytest
import torch

from ..conftest import REPO, load_checkpoint_file, run_tool

CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
ITERS = 4
#: AdamW at this rate (after the demo's warm-up factor 0.01 at the first iteration): finite losses and
#: weights for the first iterations, then non-finite gradients and weights before the loss turns NaN
HUGE_LR = 1e5


def _train(data_root: str, work: str, *extra: str) -> subprocess.CompletedProcess:
    opts = [f'{k}_dataloader.dataset.data_root={data_root}/' for k in ('train', 'val', 'test')]
    opts += [f'optim_wrapper.optimizer.lr={HUGE_LR}', 'train_dataloader.batch_size=4',
             'train_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
             'train_dataloader.dataset.indices=16', f'train_cfg.max_iters={ITERS}',
             f'train_cfg.val_interval={ITERS + 1}', 'default_hooks.checkpoint.interval=1',
             'default_hooks.checkpoint.max_keep_ckpts=-1', 'default_hooks.checkpoint.save_best=None',
             'default_hooks.logger.interval=1', *extra]
    return subprocess.run(run_tool('tools/train.py', CFG, '--work-dir', work, '--cfg-options', *opts),
                          capture_output=True, text=True, cwd=REPO, timeout=600)


def _assert_saved_checkpoints_finite(work: str) -> list[str]:
    saved = sorted(glob.glob(osp.join(work, 'iter_*.pth')), key=lambda p: int(p.split('_')[-1][:-4]))
    for ckpt in saved:
        state = load_checkpoint_file(ckpt)['state_dict']
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        assert not bad, f'{ckpt}: {len(bad)} non-finite tensors ({bad[:3]})'
    return saved


@pytest.mark.parametrize('interval', [1, 100], ids=['every-iteration', 'at-checkpoint-writes'])
def test_non_finite_weights_stop_before_they_are_saved(demo_packed, tmp_path, interval):
    """Was: iter_4.pth saved with 373 non-finite tensors (iter_3.pth with inf BN variances), and the
    message said to --resume from it. With the hook's own interval longer than the run, the check
    before each checkpoint write still catches them."""
    work = str(tmp_path / 'work')
    proc = _train(demo_packed, work, f'default_hooks.check_loss.interval={interval}')
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(error) == 1 and 'error: non-finite weights ' in error[0], proc.stderr[-3000:]
    if interval > 1:
        assert 'when saving a checkpoint' in error[0], error[0]
    saved = _assert_saved_checkpoints_finite(work)
    assert saved, 'the run must have saved finite checkpoints before it diverged'
    with open(osp.join(work, 'last_checkpoint')) as f:
        last = f.read().strip()
    assert osp.samefile(last, saved[-1])
    assert f'the last checkpoint, {last}, holds finite weights' in error[0], error[0]
    assert f'load_from={last}' in error[0] and 'Lower the learning rate' in error[0], error[0]


def test_fused_weight_check_finds_one_nan_or_minus_inf():
    """all_finite (one fused _foreach_norm, confirmed per tensor) on the demo model's parameters and
    buffers: one NaN, +inf or -inf value anywhere is found, and huge finite values (whose L2 norm
    overflows) are not mistaken for non-finite."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from fcos_plugin.engine import all_finite
    init_default_scope('mmdet')
    cfg = Config.fromfile(CFG)
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    assert all_finite(tensors)
    for i in (0, 7, len(tensors) - 1):
        flat = tensors[i].detach().view(-1)
        before = flat[-1].item()
        for value in (float('nan'), float('inf'), float('-inf'), 3e38):
            flat[-1] = value
            assert all_finite(tensors) == (value == 3e38), (i, value)
        flat[-1] = before
    assert all_finite(tensors)
