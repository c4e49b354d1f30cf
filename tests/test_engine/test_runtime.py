"""fcos_plugin.engine: the machine adapter leaves GPU configs alone, and the channels-last hook."""
from __future__ import annotations

import copy
import os.path as osp

import torch
from mmengine.config import Config

import fcos_plugin  # noqa: F401
from fcos_plugin.engine import ChannelsLastHook
from fcos_plugin.utils import adapt_cfg_to_machine

from ..conftest import REPO, load_checkpoint_file

CFG = osp.join(REPO, 'configs', 'fcos_effb0.py')


def test_gpu_config_is_left_to_mmengine(monkeypatch):
    """With CUDA, mmengine's default DDP wrapper must be built exactly as it builds it
    (broadcast_buffers=False, find_unused_parameters from the config): no model_wrapper_cfg."""
    cfg = Config.fromfile(CFG)
    cfg.launcher = 'pytorch'
    assert cfg.get('model_wrapper_cfg') is None
    before = copy.deepcopy(cfg._cfg_dict.to_dict())
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    adapt_cfg_to_machine(cfg)
    assert cfg._cfg_dict.to_dict() == before


def test_cpu_distributed_gets_gloo_and_mmengines_wrapper_arguments():
    cfg = Config.fromfile(CFG)
    cfg.launcher = 'pytorch'
    cfg.find_unused_parameters = True
    adapt_cfg_to_machine(cfg)  # this machine has no GPU
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(type='CPUCompatDistributedDataParallel', broadcast_buffers=False,
                                         find_unused_parameters=True)
    assert cfg.sync_bn is None


def test_channels_last_hook_converts_the_model_and_keeps_its_outputs():
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref = model._forward(x)

    class FakeRunner:  # the hook only reads runner.model
        pass
    runner = FakeRunner()
    runner.model = model
    ChannelsLastHook().before_run(runner)
    convs = [p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    with torch.no_grad():
        out = model._forward(x)
    for a, b in zip(sum(ref, []), sum(out, [])):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    ChannelsLastHook(enabled=False).before_run(runner)  # switched off: nothing happens, no error


def test_nan_loss_stops_training_named_and_nothing_non_finite_is_saved(demo_packed, tmp_path):
    """lr=1e6 (as a user once tried on fcos_r18_demo), the weight check off: the run stops at the first
    non-finite loss with a message naming epoch, iteration and term, exit status 1, without torch's
    "Converting a tensor with requires_grad=True to a scalar" warning, and no checkpoint holds NaN/Inf
    (the weight check is tested in test_non_finite.py)."""
    import glob
    import subprocess

    from ..conftest import run_tool
    work = str(tmp_path / 'work')
    opts = [f'{k}_dataloader.dataset.data_root={demo_packed}' for k in ('train', 'val', 'test')]
    opts += ['optim_wrapper.optimizer.lr=1e6', 'train_dataloader.batch_size=4',
             'train_dataloader.num_workers=0',
             'train_dataloader.persistent_workers=False', 'train_dataloader.dataset.indices=16',
             'train_cfg.max_epochs=3', 'train_cfg.val_interval=10',
             'default_hooks.check_loss.check_weights=False']
    proc = subprocess.run(run_tool('tools/train.py', osp.join(REPO, 'tests', 'configs', 'fcos_r18_epochs.py'),
                                   '--work-dir', work, '--cfg-options', *opts),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert 'error: non-finite loss at epoch ' in proc.stderr and ', iteration ' in proc.stderr
    assert 'loss' in proc.stderr.split('non-finite loss at')[1] and 'Traceback' not in proc.stderr
    assert 'requires_grad=True to a scalar' not in proc.stderr, proc.stderr[-3000:]
    for ckpt in glob.glob(osp.join(work, '*.pth')):
        state = load_checkpoint_file(ckpt)['state_dict']
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt
