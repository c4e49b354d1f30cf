"""tools/deploy/export_onnx.py: a valid end-to-end graph of standard ONNX ops that ONNX Runtime runs
at any size and batch (dynamic) or at 512x512 (static), a complete mmdeploy work dir, and clear
errors for bad input."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fcos_plugin.datasets.demo_data import DEMO_CLASSES

from ..conftest import REPO, load_checkpoint_file, run_tool
from .conftest import DEMO_CFG, model_cfg


def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=['CPUExecutionProvider'])


def _run(sess: ort.InferenceSession, shape, seed: int = 0):
    x = np.random.RandomState(seed).standard_normal(shape).astype(np.float32)
    return sess.run(None, {'input': x})


def test_graph_is_valid_end_to_end_and_standard(demo_onnx):
    model = onnx.load(demo_onnx)
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= {'', 'ai.onnx'}
    ops = {n.op_type for n in model.graph.node}
    assert {'NonMaxSuppression', 'TopK', 'Sqrt', 'Sigmoid'} <= ops  # NMS and the sqrt score inside
    assert [i.name for i in model.graph.input] == ['input']
    assert [o.name for o in model.graph.output] == ['dets', 'labels']
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))


def test_work_dir_is_a_complete_mmdeploy_work_dir(demo_onnx):
    work = osp.dirname(demo_onnx)
    assert not glob.glob(osp.join(work, '.export-*'))  # temporary directory removed
    with open(osp.join(work, 'deploy.json')) as f:
        deploy = json.load(f)
    assert deploy['models'][0]['net'] == 'fcos.onnx' and deploy['models'][0]['backend'] == 'onnxruntime'
    with open(osp.join(work, 'pipeline.json')) as f:
        tasks = json.load(f)['pipeline']['tasks']
    assert [t['module'] for t in tasks] == ['Transform', 'Net', 'mmdet']
    assert tasks[2]['params']['score_thr'] == 0.05
    with open(osp.join(work, 'detail.json')) as f:
        assert json.load(f)['codebase']['pth'].endswith('.pth')
    with open(osp.join(work, 'export_meta.json')) as f:
        meta = json.load(f)
    assert meta['classes'] == list(DEMO_CLASSES)
    # 320x320 test images, padded to the data preprocessor's multiple of 32: the graph knows both
    assert meta['pipeline_img_shape'] == [320, 320] and meta['pipeline_input_shape'] == [320, 320]
    from fcos_plugin.deploy import load_deploy_cfg
    assert load_deploy_cfg(osp.join(work, 'deploy_cfg.py')).fcos_plugin.pipeline_img_shape == [320, 320]


def test_mmdeploys_own_api_gets_the_plugin_rewriters(demo_ckpt, demo_packed, tmp_path):
    """mmdeploy's torch2onnx (what its tools/deploy.py runs) with our deploy config, in a process that
    never imports fcos_plugin.deploy itself: the deploy config's codebase_config.module loads the
    rewriters, so the graph has the head's sqrt score (stock mmdeploy's FCOS rewrite has none)."""
    img = sorted(glob.glob(osp.join(demo_packed, 'val2017', '*.jpg')))[0]
    code = f'''
import sys
from mmdeploy.apis import torch2onnx
assert 'fcos_plugin.deploy' not in sys.modules
torch2onnx({img!r}, {str(tmp_path)!r}, 'm.onnx',
           {osp.join(REPO, 'configs', 'deploy', 'detection_onnxruntime_dynamic.py')!r}, {DEMO_CFG!r},
           {demo_ckpt!r}, device='cpu')
print('rewriters loaded:', 'fcos_plugin.deploy' in sys.modules)
'''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'rewriters loaded: True' in proc.stdout
    ops = {n.op_type for n in onnx.load(str(tmp_path / 'm.onnx')).graph.node}
    assert 'Sqrt' in ops and 'NonMaxSuppression' in ops


def test_the_graph_is_mmdeploys_torch2onnx_graph(tmp_path):
    """export_onnx builds and loads the model once and hands it to mmdeploy's ``export`` as mmdeploy's
    ``torch2onnx`` would: with the deploy config it writes beside the model, ``torch2onnx`` (which builds and
    loads the model itself) gives the same graph, node for node and weight for weight."""
    from mmdeploy.apis import torch2onnx
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from fcos_plugin.deploy import export_onnx, init_scope
    init_scope()
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(DEMO_CFG).model)
    ckpt = str(tmp_path / 'weights.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)  # tensors only: any loader reads it
    paths = export_onnx(DEMO_CFG, ckpt, str(tmp_path / 'ours'), onnx_name='m.onnx', log=lambda s: None)
    dummy = np.random.RandomState(0).randint(0, 256, (480, 640, 3), np.uint8)  # export_onnx's input
    torch2onnx(dummy, str(tmp_path / 'mmdeploy'), 'm.onnx', paths['deploy_cfg'], DEMO_CFG, ckpt, 'cpu')
    ours, theirs = (onnx.load(str(tmp_path / d / 'm.onnx')).graph for d in ('ours', 'mmdeploy'))
    assert [(n.op_type, n.name) for n in ours.node] == [(n.op_type, n.name) for n in theirs.node]
    assert ours.SerializeToString() == theirs.SerializeToString()


@pytest.mark.parametrize('shape', [(1, 3, 512, 512), (1, 3, 480, 640), (2, 3, 384, 384)])
def test_dynamic_graph_runs_in_onnx_runtime(demo_onnx, shape):
    dets, labels = _run(_session(demo_onnx), shape)
    n, _, h, w = shape
    assert dets.shape[0] == labels.shape[0] == n and dets.shape[2] == 5
    assert dets.shape[1] == labels.shape[1] <= 100
    assert labels.dtype == np.int64
    kept = dets[..., 4] > 0
    assert kept.any()  # the weak model still detects (the threshold trap)
    boxes = dets[kept][:, :4]
    # boxes are clipped to the input (none of these is the demo pipeline's own 320x320 input, whose image
    # area the graph clips to): before the dynamic export computed its padding in the graph, a 384x384
    # input was cropped to 321x321 and this check held by accident
    lim_h, lim_w = h, w
    assert boxes.min() >= 0 and boxes[:, 0::2].max() <= lim_w + 1e-3 and boxes[:, 1::2].max() <= lim_h + 1e-3
    assert ((labels[kept] >= 0) & (labels[kept] < len(DEMO_CLASSES))).all()


def test_batch_of_two_equals_two_single_runs(demo_onnx):
    sess = _session(demo_onnx)
    x = np.random.RandomState(1).standard_normal((2, 3, 384, 384)).astype(np.float32)
    dets, labels = sess.run(None, {'input': x})
    for i in range(2):
        d1, l1 = sess.run(None, {'input': x[i:i + 1]})
        keep, keep1 = dets[i, :, 4] > 0, d1[0, :, 4] > 0
        assert keep.sum() == keep1.sum()
        np.testing.assert_allclose(np.sort(dets[i, keep, 4]), np.sort(d1[0, keep1, 4]), atol=1e-5)


def test_static_export_runs_at_512(demo_packed, demo_ckpt, tmp_path):
    from fcos_plugin.deploy import export_onnx
    cfg = model_cfg(DEMO_CFG, demo_packed)
    paths = export_onnx(cfg, demo_ckpt, str(tmp_path), onnx_name='static.onnx', shape=(512, 512),
                        log=lambda s: None)
    sess = _session(paths['onnx'])
    assert [d for d in sess.get_inputs()[0].shape] == [1, 3, 512, 512]
    dets, labels = _run(sess, (1, 3, 512, 512))
    kept = dets[0, :, 4] > 0
    assert kept.any() and dets[0, kept, :4].max() <= 512
    with open(paths['meta']) as f:
        meta = json.load(f)
    assert meta['input_shape_hw'] == [512, 512] and meta['pipeline_img_shape'] == [512, 512]
    with pytest.raises(Exception, match='input'):  # static: another size is refused
        _run(sess, (1, 3, 384, 384))


def test_positional_config_and_checkpoint(demo_ckpt, demo_onnx, tmp_path):
    """mmdet's ``CONFIG CHECKPOINT`` form exports the same model as ``--config/--ckpt``."""
    proc = subprocess.run(run_tool('tools/deploy/export_onnx.py', DEMO_CFG, demo_ckpt,
                                   '--onnx-name', 'fcos.onnx', '--work-dir', str(tmp_path)),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shape = (1, 3, 320, 320)
    for a, b in zip(_run(_session(str(tmp_path / 'fcos.onnx')), shape), _run(_session(demo_onnx), shape)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('args, message', [
    ((), 'the config is missing'),
    (('a.py', 'b.pth', '--config', 'a.py', '--ckpt', 'b.pth'), 'give the config once'),
    (('a.py', 'c.pth', '--ckpt', 'b.pth'), 'give the ckpt once'),
])
def test_config_and_checkpoint_given_once(args, message, tmp_path):
    proc = subprocess.run(run_tool('tools/deploy/export_onnx.py', *args, '--work-dir', str(tmp_path)),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def _digest(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_mismatched_checkpoint_is_named_and_nothing_is_written(demo_ckpt, tmp_path):
    ckpt = load_checkpoint_file(demo_ckpt)
    state = ckpt['state_dict']
    state.pop('bbox_head.conv_centerness.weight')
    state['bbox_head.extra_conv.weight'] = torch.zeros(1)
    state['bbox_head.conv_cls.weight'] = torch.zeros(80, 64, 3, 3)  # an 80-class head
    bad = str(tmp_path / 'bad.pth')
    torch.save({'state_dict': state, 'meta': {}}, bad)
    work = tmp_path / 'out'
    proc = subprocess.run(run_tool('tools/deploy/export_onnx.py', '--config', DEMO_CFG, '--ckpt', bad,
                                   '--onnx-name', 'fcos.onnx', '--work-dir', str(work)),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith('error: checkpoint') and 'does not match config' in err
    assert 'missing keys (1): bbox_head.conv_centerness.weight' in err
    assert 'unexpected keys (1): bbox_head.extra_conv.weight' in err
    assert 'bbox_head.conv_cls.weight (80, 64, 3, 3) vs (6, 64, 3, 3)' in err
    assert not work.exists() or not os.listdir(work)


def test_unsupported_deploy_configs_are_refused(tmp_path):
    from fcos_plugin.deploy import DeployError, load_deploy_cfg
    base = osp.join(REPO, 'configs', 'deploy', '_base_onnxruntime.py')
    cases = {
        'trt.py': ("backend_config = dict(type='tensorrt')", "backend_config.type is 'tensorrt'"),
        'seg.py': ("codebase_config = dict(type='mmseg', task='Segmentation')", "'mmseg'/'Segmentation'"),
        'outs.py': ("onnx_config = dict(output_names=['boxes'])", 'output_names'),
        'static.py': ('', 'pass --shape H W'),
    }
    for name, (body, message) in cases.items():
        path = tmp_path / name
        path.write_text(f"_base_ = ['{base}']\n{body}\n")
        with pytest.raises(DeployError, match=message.replace('(', r'\(').replace('[', r'\[')):
            load_deploy_cfg(str(path))
    with pytest.raises(DeployError, match='does not exist'):
        load_deploy_cfg(str(tmp_path / 'missing.py'))


def test_backend_table_names_the_supported_backends(tmp_path):
    """DEPLOY_BACKENDS is the one place a backend is known: an unknown backend's deploy config is refused
    naming it and listing the supported ones; the entry's configs and make_static are what the defaults
    and ``shape`` give."""
    from fcos_plugin.deploy import DeployError, load_deploy_cfg
    from fcos_plugin.deploy.configs import DEFAULT_BACKEND, DEPLOY_BACKENDS
    assert list(DEPLOY_BACKENDS) == ['onnxruntime'] == [DEFAULT_BACKEND]
    path = tmp_path / 'openvino.py'
    path.write_text(f"_base_ = ['{osp.join(REPO, 'configs', 'deploy', '_base_onnxruntime.py')}']\n"
                    "backend_config = dict(type='openvino')\n")
    with pytest.raises(DeployError) as info:
        load_deploy_cfg(str(path))
    assert "backend_config.type is 'openvino'" in str(info.value)
    assert "Supported: backends ONNX Runtime ('onnxruntime')" in str(info.value)
    onnxruntime = DEPLOY_BACKENDS['onnxruntime']
    assert load_deploy_cfg().filename == onnxruntime.dynamic_cfg
    static = load_deploy_cfg(shape=(256, 384))
    assert static.filename == onnxruntime.static_cfg
    assert static.onnx_config.input_shape == [384, 256] and 'dynamic_axes' not in static.onnx_config
    dynamic_made_static = load_deploy_cfg(onnxruntime.dynamic_cfg, shape=(256, 384))
    assert dynamic_made_static.onnx_config.input_shape == [384, 256]
    assert 'dynamic_axes' not in dynamic_made_static.onnx_config


def test_existing_outputs_need_force(demo_packed, demo_ckpt, demo_onnx):
    from fcos_plugin.deploy import DeployError, export_onnx
    before = _digest(demo_onnx)
    with pytest.raises(DeployError, match='already exist.*--force'):
        export_onnx(model_cfg(DEMO_CFG, demo_packed), demo_ckpt, osp.dirname(demo_onnx),
                    onnx_name='fcos.onnx', log=lambda s: None)
    assert _digest(demo_onnx) == before
    with pytest.raises(DeployError, match='file name ending in .onnx'):
        export_onnx(DEMO_CFG, demo_ckpt, osp.dirname(demo_onnx), onnx_name='sub/fcos.onnx')


def test_importing_fcos_plugin_does_not_import_mmdeploy():
    code = ('import sys, fcos_plugin; '
            'print(sorted(m for m in sys.modules if m.split(".")[0] == "mmdeploy"))')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == '[]'


def test_deploy_post_processing_cannot_truncate(demo_packed, demo_ckpt, demo_onnx, tmp_path):
    """Tiny pre_top_k / per-class / keep_top_k limits in the deploy config change nothing: the
    model's test_cfg (nms_pre 1000, max_per_img 100) decides, as in PyTorch."""
    from fcos_plugin.deploy import export_onnx
    deploy = tmp_path / 'tight.py'
    deploy.write_text(
        f"_base_ = ['{osp.join(REPO, 'configs', 'deploy', 'detection_onnxruntime_dynamic.py')}']\n"
        'codebase_config = dict(post_processing=dict(score_threshold=0.5, iou_threshold=0.1, '
        'max_output_boxes_per_class=1, pre_top_k=10, keep_top_k=5))\n')
    paths = export_onnx(model_cfg(DEMO_CFG, demo_packed), demo_ckpt, str(tmp_path / 'out'),
                        onnx_name='fcos.onnx', deploy_cfg=str(deploy), log=lambda s: None)
    x = (1, 3, 384, 384)
    (d1, l1), (d2, l2) = _run(_session(demo_onnx), x), _run(_session(paths['onnx']), x)
    assert (d1[0, :, 4] > 0).sum() > 5
    np.testing.assert_array_equal(l1, l2)
    np.testing.assert_allclose(d1, d2, atol=1e-5)
