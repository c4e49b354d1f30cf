"""The fixes this stack needs on torch 2.14: each works where a config or tool selects it, each test
also shows it is still needed (the stock component -- mmengine's ``Runner``, ``CheckpointHook``, file
backend, or no ``safe_checkpoint_loading`` block -- fails), and importing ``fcos_plugin`` changes none of
the upstream objects."""
from __future__ import annotations

import os
import os.path as osp
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import fcos_plugin  # noqa: F401
from fcos_plugin.engine import UnsafeCheckpointError, safe_checkpoint_loading

from .conftest import REPO, load_checkpoint_file, run_tool

CFG = osp.join(REPO, 'tests', 'configs', 'fcos_r18_epochs.py')


def _py(code: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=cwd)


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


#: What importing ``fcos_plugin`` once patched, each read back after the import (upstream modules are
#: imported first: they change some of these themselves, e.g. torch adds its own safe globals).
UPSTREAM_OBJECTS = {
    'torch safe globals': 'sorted(map(repr, torch.serialization.get_safe_globals()))',
    'torch.load': 'torch.load', 'torch.onnx.export': 'torch.onnx.export',
    'torch.cuda.set_device': 'torch.cuda.set_device',
    'HistoryBuffer.__getstate__': 'HistoryBuffer.__getstate__',
    'mmengine load_from_local': 'ckpt.load_from_local',
    'CheckpointLoader schemes': 'dict(ckpt.CheckpointLoader._schemes)',
    'mmengine _init_dist_pytorch': 'dist_utils._init_dist_pytorch',
    'mmcv.ops.nms': "importlib.import_module('mmcv.ops.nms').nms",
    'warnings filters': 'list(warnings.filters)',
    'LocalBackend.put': 'LocalBackend.put',
    'CheckpointHook._save_best_checkpoint': 'CheckpointHook._save_best_checkpoint',
    'Runner.setup_env': 'Runner.setup_env', 'Runner.load_checkpoint': 'Runner.load_checkpoint',
}


def test_importing_the_plugin_changes_no_upstream_object():
    """``import fcos_plugin`` (what every config's ``custom_imports`` does) and ``fcos_plugin.quantization``
    register modules and change nothing else: each object that an import once patched is the same object
    (or an equal value) after the import. ``fcos_plugin.deploy`` adds the checkpoint allow-list, exactly."""
    reads = ', '.join(f'{name!r}: {expr}' for name, expr in UPSTREAM_OBJECTS.items())
    code = f'''
        import importlib, warnings
        import torch, mmcv.ops, mmdet.apis, mmdet.models, mmdet.datasets, mmdet.evaluation, mmdet.engine
        import mmdeploy.apis, mmdeploy.codebase.mmdet.deploy, onnxruntime
        from mmengine.dist import utils as dist_utils
        from mmengine.fileio.backends.local_backend import LocalBackend
        from mmengine.hooks import CheckpointHook
        from mmengine.logging import HistoryBuffer
        from mmengine.runner import Runner, checkpoint as ckpt
        read = lambda: {{{reads}}}
        before = read()
        import fcos_plugin, fcos_plugin.quantization
        after = read()
        changed = [k for k in before if not (after[k] is before[k] or after[k] == before[k])]
        print('changed:', changed)
        import fcos_plugin.deploy
        from fcos_plugin.engine.checkpoint_loading import SAFE_CHECKPOINT_GLOBALS
        deploy = read()
        print('deploy changed:', [k for k in before if k != 'torch safe globals'
                                  and not (deploy[k] is before[k] or deploy[k] == before[k])])
        added = sorted(set(deploy['torch safe globals']) - set(before['torch safe globals']))
        print('deploy adds the allow-list:', added == sorted(set(map(repr, SAFE_CHECKPOINT_GLOBALS))))
    '''
    proc = _py(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'changed: []' in proc.stdout.splitlines()[0], proc.stdout
    # fcos_plugin.deploy (imported by mmdeploy through the deploy configs) adds the checkpoint allow-list
    # and nothing else (why: fcos_plugin/deploy/__init__.py)
    assert 'deploy changed: []' in proc.stdout, proc.stdout
    assert 'deploy adds the allow-list: True' in proc.stdout, proc.stdout


def test_torch_load_is_weights_only_by_default():
    assert 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    import inspect
    # torch >= 2.6: None means "weights_only unless the environment forces otherwise"
    assert inspect.signature(torch.load).parameters['weights_only'].default in (None, True)


def test_checkpoint_needs_the_fix_and_loads_with_it(trained):
    ckpt = osp.join(trained[1], 'epoch_2.pth')
    code = f'''
        import torch, fcos_plugin
        from fcos_plugin.engine import safe_checkpoint_loading
        with safe_checkpoint_loading():
            ckpt = torch.load({ckpt!r}, map_location='cpu')
        print(type(ckpt['message_hub']['log_scalars']['train/loss']).__name__, ckpt['meta']['iter'])
        torch.load({ckpt!r}, map_location='cpu')  # after the block: torch's own allow-list again
    '''
    proc = _py(code)
    assert proc.stdout.split()[0] == 'HistoryBuffer', proc.stderr[-2000:]
    assert proc.returncode != 0 and 'Unsupported global' in proc.stderr


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
        with safe_checkpoint_loading(path):
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
    """mmdeploy's export fails on torch 2.14's default (dynamo) exporter; with ``fcos_plugin.deploy``
    imported (its rewriter of ``torch.onnx.export``) it uses the TorchScript exporter -- inside
    mmdeploy's export only: ``torch.onnx.export`` itself is the same function before and after."""
    code = f'''
        import torch
        original = torch.onnx.export
        import fcos_plugin
        pass  # DEPLOY
        assert torch.onnx.export is original, 'the import changed torch.onnx.export'
        from mmdeploy.apis.onnx import export
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
        export(model, torch.rand(1, 3, 16, 16), {str(tmp_path / "m")!r}, backend='onnxruntime',
               input_metas=None, context_info=dict(deploy_cfg=dict(
                   onnx_config=dict(type='onnx', opset_version=11, input_names=['input'],
                                    output_names=['output'], save_file='m.onnx'),
                   backend_config=dict(type='onnxruntime'), codebase_config=dict(type='mmdet'))),
               input_names=['input'], output_names=['output'])
        assert torch.onnx.export is original, 'the export left torch.onnx.export patched'
        import onnx; onnx.checker.check_model({str(tmp_path / "m.onnx")!r}); print('ok')
    '''
    with_fix = _py(code.replace('pass  # DEPLOY', 'import fcos_plugin.deploy'))
    assert with_fix.returncode == 0 and 'ok' in with_fix.stdout, with_fix.stderr[-2000:]
    without = _py(code)
    assert without.returncode != 0 and 'onnxscript' in without.stderr, without.stderr[-2000:]


def _config_with_test_module(tmp_path, module: str, body: str) -> str:
    """The test config with the test-only module ``tests.test_engine.<module>`` imported (hooks, metrics)
    and the config lines ``body`` added."""
    path = tmp_path / f'{module}_config.py'
    path.write_text(f"_base_ = [{CFG!r}]\ncustom_imports = dict(imports=['fcos_plugin', "
                    f"'tests.test_engine.{module}'], allow_failed_imports=False)\n" + textwrap.dedent(body))
    return str(path)


def _first_step_config(tmp_path) -> str:
    """The test config with plain SGD at a constant LR (its first step is linear in the gradient, so
    the DDP step can be predicted from single-process steps), images in order, and a hook that saves
    each rank's parameters after the first step."""
    return _config_with_test_module(tmp_path, 'param_dump_hook', """
        custom_hooks = [dict(type='DumpParamsAfterFirstStepHook')]
        optim_wrapper = dict(_delete_=True, type='OptimWrapper',
                             optimizer=dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4))
        param_scheduler = []
        train_dataloader = dict(sampler=dict(shuffle=False))
        """)


def test_two_process_cpu_ddp_training_averages_gradients(demo_packed, tmp_path):
    """tools/dist_train.sh with 2 CPU processes: world size 2, each rank trains on its half of the batch,
    and after the first step both ranks hold identical parameters equal to what averaging the two
    halves' gradients gives -- predicted from two single-process steps, one on each rank's images
    (SGD's first step is linear in the gradient; --auto-scale-lr gives DDP twice the single-process LR:
    total batch 4 vs 2). With mmengine's own ``Runner`` (``runner_type=Runner``) training cannot start."""
    cfg = _first_step_config(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO, PYTHON=sys.executable,
               PORT=str(29500 + os.getpid() % 1000))

    def run(work, images: str, ranks: int = 1, *extra: str) -> subprocess.CompletedProcess:
        args = _train_args(demo_packed, str(work), 'train_cfg.max_epochs=1', 'train_cfg.val_interval=10',
                           'train_dataloader.batch_size=2', f'train_dataloader.dataset.indices={images}',
                           *extra)
        if ranks == 1:
            cmd = run_tool('tools/train.py', cfg, *args, '--auto-scale-lr')
        else:
            cmd = ['bash', osp.join(REPO, 'tools', 'dist_train.sh'), cfg, str(ranks), *args,
                   '--auto-scale-lr']
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, env=env)

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

    proc = run(tmp_path / 'nofix', '4', 2, 'runner_type=Runner')
    assert proc.returncode != 0
    assert 'NVIDIA driver' in proc.stdout + proc.stderr or 'CUDA' in proc.stdout + proc.stderr


def test_harmless_upstream_warnings_are_silenced_and_only_those():
    """Each silenced warning is still raised upstream (without the tools' start-up step), none reaches
    the user with it, and an unrelated UserWarning still does."""
    code = '''
        import warnings
        warnings.simplefilter('default')
        import fcos_plugin, numpy as np, torch
        from fcos_plugin.utils import quiet_upstream_warnings
        pass  # QUIET
        from mmengine.utils import is_installed
        from mmengine.visualization import Visualizer
        is_installed('mmdet')                                   # mmengine imports pkg_resources
        torch.meshgrid(torch.arange(2), torch.arange(2))        # as mmdet's point generators call it
        Visualizer(vis_backends=[dict(type='LocalVisBackend')])  # no save_dir: a drawing-only visualizer
        v = Visualizer(image=np.zeros((8, 8, 3), np.uint8))
        v.draw_bboxes(torch.tensor([[0., 0., 12., 12.]]))       # a box reaching past the image
        warnings.warn('an unrelated warning')
    '''
    with_fix = _py(code.replace('pass  # QUIET', 'quiet_upstream_warnings()'))
    assert with_fix.returncode == 0, with_fix.stderr[-2000:]
    without = _py(code)
    for message in ('pkg_resources is deprecated', 'torch.meshgrid', 'LocalVisBackend', 'out of bounds'):
        assert message in without.stderr, (message, without.stderr[-2000:])
        assert message not in with_fix.stderr, (message, with_fix.stderr[-2000:])
    assert 'an unrelated warning' in with_fix.stderr


def test_mmcv_here_has_no_cuda_nms():
    """The need for ``TunedFCOSHead``'s CPU NMS of CUDA results: this stack's mmcv is built without
    CUDA kernels (``tools/install.sh`` on a CPU-only machine), so ``mmcv.ops.nms`` cannot run CUDA
    tensors."""
    from mmcv.ops import nms as mmcv_nms

    from fcos_plugin.utils.mmcv_ops import mmcv_has_cuda_ops
    if not torch.cuda.is_available():  # built here, on a machine without CUDA: no CUDA kernels
        assert not mmcv_has_cuda_ops()
    mmcv_nms(torch.tensor([[0., 0., 4., 4.]]), torch.tensor([1.]), 0.5)  # the CPU op the head falls back to
    if torch.cuda.is_available() and not mmcv_has_cuda_ops():
        with pytest.raises(Exception):
            mmcv_nms(torch.rand(4, 4).cuda(), torch.rand(4).cuda(), 0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_head_predicts_on_cuda_as_on_cpu():
    """The tuned head's post-processing of CUDA results gives the CPU's detections, on the device."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    torch.manual_seed(0)
    feats = [torch.randn(1, model.bbox_head.in_channels, 40 // 2**i, 40 // 2**i) for i in range(5)]
    meta = [dict(img_shape=(320, 320), scale_factor=(1.0, 1.0))]
    with torch.no_grad():
        cpu = model.bbox_head.predict_by_feat(*model.bbox_head(feats), batch_img_metas=meta)[0]
        model.cuda()
        gpu = model.bbox_head.predict_by_feat(*model.bbox_head([f.cuda() for f in feats]),
                                              batch_img_metas=meta)[0]
    assert gpu.bboxes.is_cuda and len(cpu) == len(gpu) > 0
    assert torch.allclose(cpu.bboxes, gpu.bboxes.cpu(), atol=1e-3)
    assert torch.equal(cpu.labels, gpu.labels.cpu())


# ----------------------------------------------------------------------------------------------------
# checkpoints a user really has (issue 9 item 4) and atomic checkpoint writes (fix 7, issue 9 item 3)
# ----------------------------------------------------------------------------------------------------
def _pickle_globals(path: str) -> set[str]:
    """The globals a torch.save file names, read from its pickle opcodes (nothing unpickled)."""
    import pickletools
    import zipfile
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith('data.pkl')))
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == 'GLOBAL'}


@pytest.fixture(scope='module')
def stock_checkpoint(demo_packed, tmp_path_factory):
    """One epoch (2 iterations) of FCOS-R18 saved by stock mmengine (its ``Runner`` and
    ``CheckpointHook``): each message hub HistoryBuffer pickles its statistics methods as
    ``getattr(HistoryBuffer, name)``; with AdamW and scheduler state, as any checkpoint trained with
    plain mmdet has."""
    work = str(tmp_path_factory.mktemp('stock_train'))
    proc = subprocess.run(run_tool('tools/train.py', CFG, *_train_args(
        demo_packed, work, 'train_cfg.max_epochs=1', 'train_cfg.val_begin=2', 'runner_type=Runner',
        'default_hooks.checkpoint.type=CheckpointHook')), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = osp.join(work, 'epoch_1.pth')
    assert '__builtin__ getattr' in _pickle_globals(path)  # the stock form
    return demo_packed, path


def test_stock_mmengine_checkpoint_loads_tests_and_resumes(stock_checkpoint, tmp_path):
    """A checkpoint saved by stock mmengine loads with weights_only on (within
    ``safe_checkpoint_loading``; torch alone refuses it),
    tools/test.py evaluates it (Runner's load_from path), and --resume continues from it: iteration
    count and message hub history carry on."""
    data_root, ckpt = stock_checkpoint
    code = f'''
        import torch, fcos_plugin
        from fcos_plugin.engine import safe_checkpoint_loading
        with safe_checkpoint_loading():
            pass  # REMOVE
            ckpt = torch.load({ckpt!r}, map_location='cpu', weights_only=True)
        loss = ckpt['message_hub']['log_scalars']['train/loss']
        print(ckpt['meta']['iter'], len(loss.data[0]), float(loss.statistics('mean')),
              len(ckpt['optimizer']['state']), len(ckpt['param_schedulers']))
    '''
    without = _py(code.replace('with safe_checkpoint_loading():', 'if True:'))
    assert without.returncode != 0 and 'Unsupported global' in without.stderr, without.stderr[-2000:]
    # allow-listing HistoryBuffer and numpy is not enough: the getattr answer is needed too
    without_getattr = _py(code.replace('pass  # REMOVE', (
        'from fcos_plugin.engine.checkpoint_loading import history_buffer_statistic; '
        'torch.serialization._weights_only_unpickler._remove_safe_globals('
        "[(history_buffer_statistic, 'builtins.getattr')])")))
    assert without_getattr.returncode != 0 and 'GLOBAL getattr' in without_getattr.stderr, \
        without_getattr.stderr[-2000:]
    with_fix = _py(code)
    assert with_fix.returncode == 0, with_fix.stderr[-2000:]
    iters, history, mean, optim_states, schedulers = with_fix.stdout.split()
    assert int(iters) == 2 and int(history) == 2 and float(mean) > 0
    assert int(optim_states) > 50 and int(schedulers) == 2

    proc = subprocess.run(run_tool('tools/test.py', CFG, ckpt, *_train_args(data_root, str(tmp_path / 't'))),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert osp.isfile(tmp_path / 't' / 'test_metrics.json')

    work = str(tmp_path / 'resume')
    proc = subprocess.run(run_tool('tools/train.py', CFG, '--resume', ckpt, *_train_args(
        data_root, work, 'train_cfg.max_epochs=2', 'train_cfg.val_begin=3')), capture_output=True, text=True,
        cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert 'resumed epoch: 1, iter: 2' in out
    assert 'Epoch(train) [2]' in out and 'Epoch(train) [1]' not in out
    resumed = load_checkpoint_file(osp.join(work, 'epoch_2.pth'))
    assert resumed['meta']['iter'] == 4
    # the history buffers go on from the stock checkpoint's: its 2 losses, then 2 new ones
    assert len(resumed['message_hub']['log_scalars']['train/loss'].data[0]) == 4

    work = str(tmp_path / 'load_from')
    proc = subprocess.run(run_tool('tools/train.py', CFG, *_train_args(
        data_root, work, f'load_from={ckpt}', 'train_cfg.max_epochs=1', 'train_cfg.val_begin=2')),
        capture_output=True, text=True, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f'Load checkpoint from {ckpt}' in out and 'resumed' not in out


class _Reduce:
    """Pickles as ``func(*args)``."""

    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_getattr_is_answered_for_history_buffer_statistics_only(tmp_path):
    """The global ``builtins.getattr`` resolves ``HistoryBuffer``'s four statistics methods and nothing
    else; a resolved method cannot be called by the pickle; other callables stay refused."""
    from mmengine.logging import HistoryBuffer
    from mmengine.runner import load_checkpoint
    marker = tmp_path / 'pwned'
    good = str(tmp_path / 'good.pth')
    names = ('min', 'max', 'current', 'mean')
    torch.save({'state_dict': {'weight': torch.ones(1, 1), 'bias': torch.zeros(1)},
                'meta': {name: _Reduce(getattr, HistoryBuffer, name) for name in names}}, good)
    with safe_checkpoint_loading(good):
        loaded = torch.load(good, weights_only=True)
    assert loaded['meta'] == {name: vars(HistoryBuffer)[name] for name in names}
    payloads = {
        'other_method': _Reduce(getattr, HistoryBuffer, 'update'),
        'dunder': _Reduce(getattr, HistoryBuffer, '__init__'),
        'other_class': _Reduce(getattr, torch.Tensor, 'add_'),
        # getattr(getattr(HistoryBuffer, 'min'), '__globals__')
        'chain': _Reduce(getattr, HistoryBuffer.min, '__globals__'),
        # getattr(HistoryBuffer, 'mean')(buffer): a resolved method called
        'call_resolved': _Reduce(HistoryBuffer.mean, HistoryBuffer()),
        'os_system': _Reduce(os.system, f'touch {marker}'),
    }
    for name, payload in payloads.items():
        path = str(tmp_path / f'{name}.pth')
        torch.save({'state_dict': {'weight': torch.ones(1, 1)}, 'meta': payload}, path)
        with pytest.raises(UnsafeCheckpointError, match='could execute code'), safe_checkpoint_loading(path):
            load_checkpoint(torch.nn.Linear(1, 1), path)
    assert not marker.exists()


def test_numpy1_names_of_numpy_reconstructors_load(tmp_path):
    """Checkpoints saved with numpy 1.x name numpy's reconstructors ``numpy.core.multiarray.*`` (numpy 2:
    ``numpy._core``); both names load."""
    import numpy as np
    path = str(tmp_path / 'np1.pth')
    # the legacy format: plain pickles, then the storages read in order (a name may change length)
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'seed': np.int64(3), 'a': np.arange(3.0)}}, path,
               _use_new_zipfile_serialization=False)
    with open(path, 'rb') as f:
        data = f.read()
    assert b'numpy._core.multiarray\n' in data
    with open(path, 'wb') as f:
        f.write(data.replace(b'numpy._core.multiarray\n', b'numpy.core.multiarray\n'))
    with safe_checkpoint_loading(path):
        ckpt = torch.load(path, weights_only=True)
    assert ckpt['meta']['seed'] == 3 and ckpt['meta']['a'].tolist() == [0.0, 1.0, 2.0]


def test_test_tool_refuses_a_checkpoint_of_another_model(stock_checkpoint, tmp_path):
    """An R18 checkpoint with the EfficientNet config: refused (fewer than half of the model's weights
    in it), naming the checkpoint, the config and the count; nothing evaluated."""
    import re
    data_root, ckpt = stock_checkpoint
    config = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
    options = [f'test_dataloader.dataset.data_root={data_root}', 'test_dataloader.num_workers=0',
               'test_dataloader.persistent_workers=False', 'test_dataloader.dataset.indices=4']
    proc = subprocess.run(run_tool('tools/test.py', config, ckpt, '--work-dir', str(tmp_path),
                                   '--cfg-options', *options), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith('error: ') and ckpt in message and config in message
    found, total = map(int, re.search(r"only (\d+) of the model's (\d+) weights", message).groups())
    assert 0 <= found < total / 2 and total > 300
    assert not osp.exists(tmp_path / 'test_metrics.json')


def test_tools_name_a_checkpoint_that_cannot_be_downloaded(demo_packed, tmp_path):
    """tools/train.py prints the CheckpointDownloadError of an init_cfg URL that cannot be reached
    (URL, 'offline', how to pass a local file) without a traceback."""
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(('127.0.0.1', 0))
        url = f'http://127.0.0.1:{s.getsockname()[1]}/weights/lite0-1234.pth'
    config = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
    proc = subprocess.run(run_tool('tools/train.py', config, *_train_args(
        demo_packed, str(tmp_path / 'work'), f'model.backbone.init_cfg.checkpoint={url}')),
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, TORCH_HOME=str(tmp_path / 'torch')))
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith('error: cannot download checkpoint') and url in message and 'offline' in message


def _corrupt(kind: str, path: str) -> None:
    if kind == 'empty':
        open(path, 'wb').close()
    elif kind == 'random':
        with open(path, 'wb') as f:
            f.write(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                  dtype=torch.uint8).numpy().tobytes())
    else:
        torch.save({'state_dict': {'w': torch.randn(10000)}}, path)
        with open(path, 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data[:len(data) // 2])


@pytest.mark.parametrize('path_kind', [('test', 'truncated'), ('resume', 'empty'), ('load_from', 'random'),
                                       ('init_cfg', 'truncated'), ('export', 'random')],
                         ids=lambda p: '-'.join(p))
def test_corrupt_checkpoint_is_named_on_every_loading_path(demo_packed, tmp_path, path_kind):
    """Truncated, empty and random files (one kind per path; all three kinds per loader are covered by
    test_efficientnet_weights.py) are "corrupt or not a checkpoint" on each tool path, not "could execute
    code" nor a traceback."""
    where, kind = path_kind
    bad = str(tmp_path / f'{kind}.pth')
    _corrupt(kind, bad)
    work = str(tmp_path / 'work')
    if where == 'test':
        cmd = run_tool('tools/test.py', CFG, bad, *_train_args(demo_packed, work))
    elif where == 'export':
        cmd = run_tool('tools/deploy/export_onnx.py', '--config', CFG, '--ckpt', bad, '--work-dir', work)
    elif where == 'init_cfg':
        cfg = tmp_path / 'init_cfg.py'
        cfg.write_text(f"_base_ = [{CFG!r}]\nmodel = dict(backbone=dict(init_cfg=dict(\n"
                       f"    _delete_=True, type='Pretrained', checkpoint={bad!r})))\n")
        cmd = run_tool('tools/train.py', str(cfg), *_train_args(demo_packed, work))
    elif where == 'resume':
        cmd = run_tool('tools/train.py', CFG, '--resume', bad, *_train_args(demo_packed, work))
    else:
        cmd = run_tool('tools/train.py', CFG, *_train_args(demo_packed, work, f'load_from={bad}'))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith('error: ') and bad in message, message
    assert 'corrupt or not a checkpoint' in message, message
    assert 'could execute code' not in message


@pytest.fixture
def small_disk(tmp_path):
    """``mount(size_mb)``: a tmpfs of that size mounted under tmp_path (root only), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip('mounting a tmpfs needs root')
    mounts = []

    def mount(size_mb: int) -> str:
        path = tmp_path / f'disk{len(mounts)}'
        path.mkdir()
        proc = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_mb}m', 'tmpfs', str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f'cannot mount a tmpfs here: {proc.stderr.strip()}')
        mounts.append(path)
        return osp.realpath(path)

    yield mount
    for path in reversed(mounts):
        if subprocess.run(['umount', str(path)], capture_output=True).returncode != 0:
            subprocess.run(['umount', '-l', str(path)], capture_output=True)


def test_checkpoint_write_is_atomic_and_a_full_disk_is_named(small_disk):
    """The ``atomic_local`` file backend (what ``AtomicCheckpointHook`` saves through): on a 2 MB disk a
    4 MB checkpoint fails with DiskFullError ("no space left on DIR"), leaves no partial file and leaves
    an existing checkpoint of the same name as it was. mmengine's own ``LocalBackend`` leaves a partial
    file named like a checkpoint and overwrites the old one in place."""
    disk = small_disk(2)
    code = f'''
        import os, sys, torch, fcos_plugin
        from mmengine.runner.checkpoint import save_checkpoint
        args = dict(backend=sys.argv[1]) if sys.argv[1:] else None
        save_checkpoint({{'w': torch.arange(1000.)}}, {disk!r} + '/epoch_1.pth', backend_args=args)
        for name in ('epoch_2.pth', 'epoch_1.pth'):   # a new file, then overwriting the one that fits
            try:
                save_checkpoint({{'w': torch.zeros(1_000_000)}}, {disk!r} + '/' + name,  # 4 MB
                                backend_args=args)
            except OSError as e:
                print('>>', type(e).__name__, '|', e)
        print('>>', sorted(os.listdir({disk!r})))
        try:
            print('>>', torch.load({disk!r} + '/epoch_1.pth')['w'].sum().item())
        except Exception as e:
            print('>> unloadable', type(e).__name__)
    '''
    results = lambda proc: [line[3:] for line in proc.stdout.splitlines() if line.startswith('>> ')]
    run = lambda *args: subprocess.run([sys.executable, '-c', textwrap.dedent(code), *args],
                                       capture_output=True, text=True, cwd=REPO)
    with_fix = run('atomic_local')
    assert with_fix.returncode == 0, with_fix.stderr[-2000:]
    lines = results(with_fix)
    assert lines[0].startswith(f'DiskFullError | no space left on {disk} ') and 'epoch_2.pth' in lines[0]
    assert 'nothing was written' in lines[0]
    assert lines[1].startswith(f'DiskFullError | no space left on {disk} ') and 'epoch_1.pth' in lines[1]
    assert 'previous version is unchanged' in lines[1]
    assert lines[2] == "['epoch_1.pth']"  # no partial epoch_2.pth, no temporary file
    assert lines[3] == str(sum(range(1000)) * 1.0)
    for name in os.listdir(disk):
        os.remove(osp.join(disk, name))
    without = run()
    lines = results(without)
    assert lines[0].startswith('OSError | [Errno 28]') and 'epoch_2.pth' in lines[2]  # partial file left
    assert lines[3].startswith('unloadable')  # the old checkpoint was overwritten in place


def test_full_disk_while_training_keeps_the_last_checkpoint(demo_packed, small_disk, tmp_path):
    """A real training on a 200 MB disk: epoch_1.pth (~139 MB: R18, AdamW state) fits, epoch_2.pth does
    not. The run stops with exit status 1 and "no space left on DIR" (no traceback), epoch_1.pth is
    byte for byte what was saved and loads, last_checkpoint points at it, no partial file is left."""
    import hashlib
    import json
    disk = small_disk(200)
    record = tmp_path / 'saved.jsonl'  # written by the hook after each checkpoint, outside the disk
    cfg = _config_with_test_module(tmp_path, 'checkpoint_digest_hook', f"""
        custom_hooks = [dict(type='RecordCheckpointDigestHook', out={str(record)!r})]
        """)
    proc = subprocess.run(run_tool('tools/train.py', cfg, *_train_args(
        demo_packed, disk, 'train_cfg.max_epochs=2', 'train_cfg.val_begin=3')), capture_output=True,
        text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    first = osp.join(disk, 'epoch_1.pth')
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f'error: no space left on {disk} ') and 'epoch_2.pth' in message
    assert f'{first}, is intact' in message and '--resume' in message
    assert 2 * osp.getsize(first) > 200 * 2**20  # the second one really could not fit
    assert sorted(n for n in os.listdir(disk) if n.endswith('.pth') or n.endswith('.tmp')) == ['epoch_1.pth']
    assert not any(n.startswith('.') for n in os.listdir(disk))
    with open(osp.join(disk, 'last_checkpoint')) as f:
        assert f.read().strip() == first
    saved = [json.loads(line) for line in record.read_text().splitlines()]
    assert [s['path'] for s in saved] == [first]
    with open(first, 'rb') as f:
        assert hashlib.sha256(f.read()).hexdigest() == saved[0]['sha256']
    ckpt = load_checkpoint_file(first)
    assert ckpt['meta']['epoch'] == 1 and len(ckpt['state_dict']) > 100 and ckpt['optimizer']['state']


def test_previous_best_checkpoint_survives_a_failed_save_of_the_next(demo_packed, tmp_path):
    """``AtomicCheckpointHook``: every validation is a new best (``ValidationCounter``), and saving the
    second best fails (``FailSecondBestSaveHook`` raises before anything is written, as a full disk or a
    kill would). The first best checkpoint must still be there and load, and the log must not claim it
    was removed; mmengine's own ``CheckpointHook`` removes it before saving the second, leaving no best
    checkpoint at all. Without a failure, three validations leave exactly the last best checkpoint (each
    previous one removed once the next is saved)."""
    cfg = _config_with_test_module(tmp_path, 'failing_save_hook', """
        custom_hooks = [dict(type='FailSecondBestSaveHook')]
        val_evaluator = dict(_delete_=True, type='ValidationCounter')
        default_hooks = dict(checkpoint=dict(interval=10, save_best='count', rule='greater'))
        """)
    code = f'''
        import glob, os, subprocess, sys
        import fcos_plugin
        from mmengine.runner.checkpoint import _load_checkpoint
        from fcos_plugin.engine import safe_checkpoint_loading
        work = sys.argv[1]
        env = dict(os.environ, PYTHONPATH={REPO!r})
        proc = subprocess.run(sys.argv[2:], capture_output=True, text=True, env=env)
        print('returncode', proc.returncode, 'simulated failure' in proc.stderr)
        print('removals', proc.stdout.count('The previous best checkpoint'),
              proc.stdout.count('is removed (the new one is saved)'))
        best = sorted(os.path.basename(p) for p in glob.glob(os.path.join(work, 'best_*.pth')))
        print('best', best)
        with safe_checkpoint_loading():
            ckpt = _load_checkpoint(os.path.join(work, best[-1]), map_location='cpu')
        print('epoch', ckpt['meta']['epoch'], 'tensors', len(ckpt['state_dict']))
    '''
    work = str(tmp_path / 'work')

    def run(hook: str, epochs: int, fail_at: int) -> subprocess.CompletedProcess:
        shutil.rmtree(work, ignore_errors=True)
        train = run_tool('tools/train.py', cfg, *_train_args(
            demo_packed, work, f'train_cfg.max_epochs={epochs}', 'train_cfg.val_interval=1',
            f'custom_hooks.0.fail_at={fail_at}', f'default_hooks.checkpoint.type={hook}'))
        return subprocess.run([sys.executable, '-c', textwrap.dedent(code), work, *train],
                              capture_output=True, text=True, cwd=REPO)

    with_fix = run('AtomicCheckpointHook', 2, fail_at=2)
    assert with_fix.returncode == 0, with_fix.stderr[-3000:]
    assert 'returncode 1 True' in with_fix.stdout, with_fix.stdout
    assert "best ['best_count_epoch_1.pth']" in with_fix.stdout and 'epoch 1 tensors' in with_fix.stdout
    assert 'removals 0 0' in with_fix.stdout  # (mmengine logged a removal before the failed save)
    without = run('CheckpointHook', 2, fail_at=2)
    assert 'returncode 1 True' in without.stdout and 'best []' in without.stdout, without.stdout
    no_failure = run('AtomicCheckpointHook', 3, fail_at=0)
    assert no_failure.returncode == 0, no_failure.stderr[-3000:]
    assert 'returncode 0 False' in no_failure.stdout, no_failure.stdout
    assert 'removals 2 2' in no_failure.stdout, no_failure.stdout
    assert "best ['best_count_epoch_3.pth']" in no_failure.stdout and 'epoch 3 tensors' in no_failure.stdout
