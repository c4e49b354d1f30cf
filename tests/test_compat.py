"""fcos_plugin.compat: each fix works, and each test also shows the fix is still needed
(``FCOS_PLUGIN_DISABLE_COMPAT`` switches a fix off in a subprocess)."""
from __future__ import annotations

import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch

import fcos_plugin  # noqa: F401
from fcos_plugin.compat import UnsafeCheckpointError

from .conftest import REPO, run_tool

CFG = osp.join(REPO, 'tests', 'configs', 'fcos_r18_epochs.py')


def _py(code: str, disable: str = '', cwd: str = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, FCOS_PLUGIN_DISABLE_COMPAT=disable)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, cwd=cwd)


def _train_args(data_root: str, work_dir: str, *extra: str) -> list[str]:
    return ['--work-dir', work_dir, '--cfg-options', f'train_dataloader.dataset.data_root={data_root}',
            f'val_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}', 'train_dataloader.batch_size=4',
            'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
            'test_dataloader.num_workers=0', 'train_dataloader.persistent_workers=False',
            'val_dataloader.persistent_workers=False', 'test_dataloader.persistent_workers=False',
            'default_hooks.logger.interval=1', 'train_dataloader.dataset.indices=8',
            'val_dataloader.dataset.indices=4', 'test_dataloader.dataset.indices=4', *extra]


@pytest.fixture(scope='module')
def trained(demo_packed, tmp_path_factory):
    """Two epochs of mmdet FCOS-R18 on the demo pack: checkpoints with message hub and numpy meta."""
    work = str(tmp_path_factory.mktemp('compat_train'))
    proc = subprocess.run(run_tool('tools/train.py', CFG, *_train_args(
        demo_packed, work, 'train_cfg.max_epochs=2', 'train_cfg.val_interval=10')),
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return demo_packed, work


def test_torch_load_is_weights_only_by_default():
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    import inspect
    # torch >= 2.6: None means "weights_only unless the environment forces otherwise"
    assert inspect.signature(torch.load).parameters['weights_only'].default in (None, True)


def test_checkpoint_needs_the_fix_and_loads_with_it(trained):
    ckpt = osp.join(trained[1], 'epoch_2.pth')
    code = f'''
        import torch, fcos_plugin
        ckpt = torch.load({ckpt!r}, map_location='cpu')
        print(type(ckpt['message_hub']['log_scalars']['train/loss']).__name__, ckpt['meta']['iter'])
    '''
    without = _py(code, disable='checkpoint')
    assert without.returncode != 0 and 'Unsupported global' in without.stderr
    with_fix = _py(code)
    assert with_fix.returncode == 0, with_fix.stderr
    assert with_fix.stdout.split()[0] == 'HistoryBuffer'


def test_resume_continues_and_load_from_loads(trained):
    data_root, work = trained
    proc = subprocess.run(run_tool('tools/train.py', CFG, '--resume', osp.join(work, 'epoch_1.pth'),
                                   *_train_args(data_root, work, 'train_cfg.max_epochs=2',
                                                'train_cfg.val_interval=10')),
                          capture_output=True, text=True, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'resumed epoch: 1' in out
    assert 'Epoch(train) [2]' in out and 'Epoch(train) [1]' not in out

    work2 = osp.join(work, 'load_from')
    proc = subprocess.run(run_tool('tools/train.py', CFG, *_train_args(
        data_root, work2, f'load_from={osp.join(work, "epoch_2.pth")}', 'train_cfg.max_epochs=1',
        'train_cfg.val_interval=10')), capture_output=True, text=True, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'Load checkpoint from' in out


def test_malicious_checkpoint_is_refused_and_its_payload_does_not_run(demo_packed, tmp_path):
    marker = tmp_path / 'pwned'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {marker}',)

    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': Payload()}, path)
    from mmengine.runner import load_checkpoint
    with pytest.raises(UnsafeCheckpointError, match='refusing to load checkpoint .*evil.pth'):
        load_checkpoint(torch.nn.Linear(1, 1), path)
    assert not marker.exists()
    # and through the tools: a clear message, no traceback, payload not run
    proc = subprocess.run(run_tool('tools/test.py', CFG, path, *_train_args(demo_packed,
                                                                           str(tmp_path / 'w'))),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert 'refusing to load checkpoint' in proc.stderr and 'Traceback' not in proc.stderr
    assert not marker.exists()


def test_mmdeploy_export_needs_torchscript_exporter(tmp_path):
    code = f'''
        import torch, fcos_plugin
        from mmdeploy.apis.onnx import export
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
        export(model, torch.rand(1, 3, 16, 16), {str(tmp_path / "m")!r}, backend='onnxruntime',
               input_metas=None, context_info=dict(deploy_cfg=dict(
                   onnx_config=dict(type='onnx', opset_version=11, input_names=['input'],
                                    output_names=['output'], save_file='m.onnx'),
                   backend_config=dict(type='onnxruntime'), codebase_config=dict(type='mmdet'))),
               input_names=['input'], output_names=['output'])
        import onnx; onnx.checker.check_model({str(tmp_path / "m.onnx")!r}); print('ok')
    '''
    with_fix = _py(code)
    assert with_fix.returncode == 0 and 'ok' in with_fix.stdout, with_fix.stderr[-2000:]
    without = _py(code, disable='onnx')
    assert without.returncode != 0 and 'onnxscript' in without.stderr


def _first_step_config(tmp_path) -> str:
    """The test config with plain SGD at a constant LR (its first step is linear in the gradient, so
    the DDP step can be predicted from single-process steps), images in order, and a hook that saves
    each rank's parameters after the first step."""
    path = tmp_path / 'first_step.py'
    path.write_text(textwrap.dedent(f"""
        _base_ = [{CFG!r}]
        custom_imports = dict(imports=['fcos_plugin', 'tests.test_engine.param_dump_hook'],
                              allow_failed_imports=False)
        custom_hooks = [dict(type='DumpParamsAfterFirstStepHook')]
        optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                             optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
        param_scheduler = []
        train_dataloader = dict(sampler=dict(shuffle=False))
        """))
    return str(path)


def test_two_process_cpu_ddp_training_averages_gradients(demo_packed, tmp_path):
    """tools/dist_train.sh with 2 CPU processes: world size 2, each rank trains on its half of the batch,
    and after the first step both ranks hold identical parameters equal to what averaging the two
    halves' gradients gives -- predicted from two single-process steps, one on each rank's images
    (SGD's first step is linear in the gradient; --auto-scale-lr gives DDP twice the single-process LR:
    total batch 4 vs 2). Without the CPU DDP wrapper fix (``dist`` off) training cannot start."""
    cfg = _first_step_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO, PYTHON=sys.executable,
               PORT=str(29500 + os.getpid() % 1000))

    def run(work, images: str, ranks: int = 1, disable: str = '') -> subprocess.CompletedProcess:
        args = _train_args(demo_packed, str(work), 'train_cfg.max_epochs=1', 'train_cfg.val_interval=10',
                           'train_dataloader.batch_size=2', f'train_dataloader.dataset.indices={images}')
        if ranks == 1:
            cmd = run_tool('tools/train.py', cfg, *args, '--auto-scale-lr')
        else:
            cmd = ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), cfg, str(ranks), *args,
                   '--auto-scale-lr']
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                              env=dict(env, FCOS_PLUGIN_DISABLE_COMPAT=disable))

    proc = run(tmp_path / 'ddp', '4', ranks=2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    ranks = [torch.load(tmp_path / 'ddp' / f'params_rank{r}.pt', weights_only=True) for r in (0, 1)]
    assert [(d['rank'], d['world_size']) for d in ranks] == [(0, 2), (1, 2)]
    single = []
    for d in ranks:  # the same step on one rank's images alone
        work = tmp_path / f'single{d["rank"]}'
        # DefaultSampler without shuffling gives rank r the dataset positions r, r + 2, ...
        proc = run(work, f'[{d["rank"]},{d["rank"] + 2}]')
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        single.append(torch.load(work / 'params_rank0.pt', weights_only=True))
        assert single[-1]['world_size'] == 1 and single[-1]['img_ids'] == d['img_ids']
    p, p0, p1 = ranks[0]['init'], ranks[0]['params'], ranks[1]['params']
    s0, s1 = single[0]['params'], single[1]['params']
    assert p.keys() == p0.keys() == p1.keys() == s0.keys() and len(p) > 50
    err = scale = half = 0.0
    for k in p:
        assert torch.equal(p0[k], p1[k]), f'{k} differs between the ranks after a DDP step'
        assert torch.equal(single[0]['init'][k], p[k]), 'all runs must start from the same weights'
        # SGD's first step p' = p - lr * (g + wd * p) (momentum buffer = g); DDP has lr_ddp = 2 lr and
        # g = (g0 + g1) / 2, so p_ddp - p = (p_s0 - p) + (p_s1 - p)
        err = max(err, float((p0[k] - (s0[k] + s1[k] - p[k])).abs().max()))
        scale = max(scale, float((p0[k] - p[k]).abs().max()))
        half = max(half, float((p0[k] - s0[k]).abs().max()))
    # Not exact: mmdet's FCOS head normalises its losses by the positives averaged over the ranks
    # (reduce_mean), a single process by its own, which moves the prediction by ~0.5 % (3e-3 measured);
    # a sum instead of a mean, or one rank's gradient alone, is off by ~50-100 %.
    assert scale > 0 and err <= 2e-2 * scale, (err, scale)
    assert half > 0.1 * scale  # not what one rank's half of the batch gives alone

    proc = run(tmp_path / 'nofix', '4', ranks=2, disable='dist')
    assert proc.returncode != 0
    assert 'NVIDIA driver' in proc.stdout + proc.stderr or 'CUDA' in proc.stdout + proc.stderr


def test_harmless_upstream_warnings_are_silenced_and_only_those():
    """Each silenced warning is still raised upstream (fix 'warnings' off), none reaches the user with
    it on, and an unrelated UserWarning still does."""
    code = '''
        import warnings
        warnings.simplefilter('default')
        import fcos_plugin, numpy as np, torch
        from mmengine.utils import is_installed
        from mmengine.visualization import Visualizer
        is_installed('mmdet')                                   # mmengine imports pkg_resources
        torch.meshgrid(torch.arange(2), torch.arange(2))        # as mmdet's point generators call it
        Visualizer(vis_backends=[dict(type='LocalVisBackend')])  # no save_dir: a drawing-only visualizer
        v = Visualizer(image=np.zeros((8, 8, 3), np.uint8))
        v.draw_bboxes(torch.tensor([[0., 0., 12., 12.]]))       # a box reaching past the image
        warnings.warn('an unrelated warning')
    '''
    with_fix = _py(code)
    assert with_fix.returncode == 0, with_fix.stderr[-2000:]
    without = _py(code, disable='warnings')
    for message in ('pkg_resources is deprecated', 'torch.meshgrid', 'LocalVisBackend', 'out of bounds'):
        assert message in without.stderr, (message, without.stderr[-2000:])
        assert message not in with_fix.stderr, (message, with_fix.stderr[-2000:])
    assert 'an unrelated warning' in with_fix.stderr


@pytest.mark.parametrize('score_threshold', [0, 0.3])
@pytest.mark.parametrize('max_num', [-1, 5])
def test_nms_fallback_equals_mmcvs_cpu_op(score_threshold, max_num):
    """Fix 5 (NMS on CUDA through torchvision, since this mmcv has no CUDA kernels) computes what mmcv's
    own op computes, on the CPU where both run: same kept indices in the same order, same dets --
    including zero scores, which mmcv keeps at score_threshold=0 (a '> threshold' filter drops them)."""
    from mmcv.ops import nms as mmcv_nms
    from mmcv.ops.nms import NMSop

    from fcos_plugin.compat import _mmcv_has_cuda_ops, torchvision_nms
    assert not _mmcv_has_cuda_ops()  # the need: mmcv.ops.nms cannot run CUDA tensors here
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        n = 60
        xy = torch.rand(n, 2, generator=gen) * 80
        wh = torch.rand(n, 2, generator=gen) * 30 + 1
        boxes = torch.cat([xy, xy + wh], 1)
        scores = torch.randperm(n, generator=gen).float() / n  # distinct; one exactly 0
        scores[scores > 0.9] = 0.3  # several exactly at the threshold (kept only at threshold 0)
        ref_inds = NMSop.apply(boxes, scores, 0.5, 0, score_threshold, max_num)
        dets, inds = torchvision_nms(boxes, scores, 0.5, 0, score_threshold, max_num)
        ref_dets, _ = mmcv_nms(boxes, scores, 0.5, score_threshold=score_threshold, max_num=max_num)
        tied = scores[ref_inds] == 0.3  # equal scores: either op may order them differently
        assert sorted(inds[tied].tolist()) == sorted(ref_inds[tied].tolist()), trial
        assert torch.equal(inds[~tied], ref_inds[~tied]), trial
        assert torch.equal(dets[~tied], ref_dets[~tied]) and len(dets) == len(ref_dets)
        assert (0 in scores[inds].tolist()) == (score_threshold == 0 and 0 in scores[ref_inds].tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_nms_on_cuda_tensors_equals_cpu():
    from mmcv.ops import batched_nms
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=gen) * 200
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=gen) * 40 + 1], 1)
    scores, idxs = torch.rand(200, generator=gen), torch.randint(0, 5, (200,), generator=gen)
    cfg = dict(type='nms', iou_threshold=0.6)
    cpu = batched_nms(boxes, scores, idxs, cfg)
    gpu = batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), cfg)
    assert torch.equal(cpu[1], gpu[1].cpu()) and torch.allclose(cpu[0], gpu[0].cpu())
