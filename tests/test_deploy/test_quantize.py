"""tools/deploy/quantize_onnx.py: the int8 network calibrated on the LMDB train set, float
post-processing, and a report with the mAP and latency of both models, checked against references.

* **Graph** (:func:`test_int8_graph_quantizes_the_network_and_keeps_post_processing_float`): the int8
  graph has the float graph's convolutions, same names, each fed by uint8 activations; all but the
  head's outputs with per-channel int8 weights that dequantize to the float graph's weights (within half
  a quantization step), int32 biases and a quantized output; additions, fusion weights, resize and
  max-pool read int8 tensors; no post-processing op reads a dequantized tensor.
* **Kernels** (:func:`test_int8_network_runs_as_fused_int8_kernels`): >= 90 % of the convolution
  multiply-adds run as int8 kernels in ONNX Runtime's optimized graph, and no float result between them
  is quantized again (a conv-only quantization requantizes 96 of them).
* **Fusion weights folded** (:func:`test_fusion_weights_are_folded_into_scales`): no BiFPN fusion weight
  is multiplied at run time; each folded scale divided by its input's scale is one of the checkpoint's
  normalised fusion weights (PyTorch's ``FastNormalizedFusion.normalized_weights``), all of them once.
* **Accuracy** (:func:`test_int8_map_within_one_point_of_float`): int8 bbox mAP within 1.0 point of
  the float model's on the demo val set.
* **Report** (:func:`test_report_equals_reference_evaluations`): on the seeded, trained session
  checkpoint (``demo_trained``, mAP > 0.1, so float and int8 score differently), the report's float
  metrics equal ``tools/deploy/test_onnx.py``'s on the same images and both models' metrics equal an
  evaluation made here from mmdeploy's ONNX Runtime backend model, mmengine's dataloader and the
  config's ``val_evaluator``; the latency input is the first val image at the size the evaluation
  feeds the model. Evaluating the float model twice, or timing at another size, fails it.
* **Static exports of another size** (:func:`test_static_export_of_another_size`, issue 8 bug 7): a
  256x320 static export quantizes, is evaluated and timed at 256x320; a deploy config or
  ``export_meta.json`` that contradicts the graph fails in seconds, before calibration.
"""
from __future__ import annotations

import copy
import json
import os.path as osp
import shutil
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from ..conftest import REPO, run_tool
from .conftest import DEMO_CFG, data_options, model_cfg

POST_PROCESSING_OPS = ('Sigmoid', 'Sqrt', 'TopK', 'NonMaxSuppression', 'ReduceMax')
NUM_CALIB = 8
NUM_IMAGES = 40  # the whole val set of the session checkpoint (conftest.LEARN_DATA)
STATIC_HW = (256, 320)  # not 512x512, not square: (height, width) order matters


def _quantize(cfg_path: str, model: str, data_root: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(run_tool('tools/deploy/quantize_onnx.py', cfg_path, model, *extra,
                                   '--cfg-options', *data_options(data_root, ('train', 'val'))),
                          capture_output=True, text=True, cwd=REPO)


def _copy_model_dir(model: str, dst: str) -> str:
    """The exported model's directory (model, deploy_cfg.py, pipeline.json...) copied to ``dst``."""
    shutil.copytree(osp.dirname(model), dst)
    return osp.join(dst, osp.basename(model))


def _input_dims(model: str) -> list:
    return ort.InferenceSession(model, providers=['CPUExecutionProvider']).get_inputs()[0].shape


def reference_evaluation(data_root: str, model: str, num_images: int):
    """COCO metrics of an ONNX model computed here, without ``fcos_plugin.deploy``'s evaluation code:
    mmdeploy's ONNX Runtime backend model (deploy config beside the model), the config's val dataloader
    built by mmengine (first ``num_images`` images, batch 1; the pipeline rewritten by mmdeploy's own
    ``process_model_config`` for a static deploy config) and an ``Evaluator`` of its ``val_evaluator``.

    Returns:
        tuple: metrics, the network input shape and the path of the first image.
    """
    from mmdeploy.apis import build_task_processor
    from mmdeploy.codebase.mmdet.deploy.object_detection import process_model_config
    from mmdeploy.utils import get_input_shape, is_dynamic_shape
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.evaluator import Evaluator
    from mmengine.runner import Runner

    import fcos_plugin  # noqa: F401
    register_all_modules(init_default_scope=True)
    cfg = model_cfg(DEMO_CFG, data_root)
    deploy_cfg = Config.fromfile(osp.join(osp.dirname(model), 'deploy_cfg.py'))
    ort_model = build_task_processor(copy.deepcopy(cfg), deploy_cfg, 'cpu').build_backend_model([model])
    loader_cfg = copy.deepcopy(cfg.val_dataloader)
    if not is_dynamic_shape(deploy_cfg):
        static = process_model_config(Config(dict(test_pipeline=loader_cfg.dataset.pipeline)), [''],
                                      get_input_shape(deploy_cfg))
        loader_cfg.dataset.pipeline = static.test_pipeline
    loader_cfg.dataset.indices = num_images
    loader_cfg.update(batch_size=1, num_workers=0, persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg)
    evaluator = Evaluator(copy.deepcopy(cfg.val_evaluator))
    evaluator.dataset_meta = loader.dataset.metainfo
    first = None
    for data in loader:
        if first is None:
            first = (list(ort_model.data_preprocessor(copy.deepcopy(data), False)['inputs'].shape),
                     data['data_samples'][0].img_path)
        evaluator.process(data_samples=ort_model.test_step(data), data_batch=data)
    return evaluator.evaluate(len(loader.dataset)), *first


@pytest.fixture(scope='module')
def int8_run(demo_trained, trained_onnx, tmp_path_factory) -> dict:
    """The trained demo model quantized by the tool (in a copy of its export directory) and evaluated on
    the first ``NUM_IMAGES`` val images."""
    model = _copy_model_dir(trained_onnx, str(tmp_path_factory.mktemp('int8') / 'onnx'))
    out = osp.join(osp.dirname(model), 'fcos_int8.onnx')
    proc = _quantize(DEMO_CFG, model, demo_trained['data_root'], '--out', out, '--num-calib', str(NUM_CALIB),
                     '--num-images', str(NUM_IMAGES))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(osp.splitext(out)[0] + '_report.json') as f:
        report = json.load(f)
    return dict(model=model, out=out, report=report, stdout=proc.stdout, data_root=demo_trained['data_root'])


def _constants(model: onnx.ModelProto) -> dict:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    values.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                   for n in model.graph.node if n.op_type == 'Constant'})
    return values


def _float_conv_params(model: onnx.ModelProto) -> dict:
    """name -> (weight, bias) of every float Conv, with a following multiplication by a scalar constant
    folded in (ONNX Runtime's pre-processing fuses it: the head's per-level ``Scale`` of the box branch)."""
    values = _constants(model)
    users = {}
    for node in model.graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    params = {}
    for conv in (n for n in model.graph.node if n.op_type == 'Conv'):
        w, b = values[conv.input[1]], values[conv.input[2]] if len(conv.input) > 2 else None
        after = users.get(conv.output[0], [])
        if len(after) == 1 and after[0].op_type == 'Mul':
            other = [i for i in after[0].input if i != conv.output[0]][0]
            if other in values and values[other].size == 1:
                w, b = w * values[other], None if b is None else b * values[other]
        params[conv.name] = (w, b)
    return params


def _network_convs(model: onnx.ModelProto) -> tuple[set, set]:
    """Names of the float graph's convolutions: (network, head outputs). A head output has no
    convolution after it (what follows is post-processing)."""
    users = {}
    for node in model.graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    below: dict = {}
    for node in reversed(model.graph.node):
        nxt = [u for o in node.output for u in users.get(o, [])]
        below[node.name] = any(u.op_type == 'Conv' or below[u.name] for u in nxt)
    convs = [n for n in model.graph.node if n.op_type == 'Conv']
    return {n.name for n in convs if below[n.name]}, {n.name for n in convs if not below[n.name]}


def test_int8_graph_quantizes_the_network_and_keeps_post_processing_float(int8_run):
    assert f'{NUM_CALIB} calibration images' in int8_run['stdout']
    assert int8_run['report']['quantization']['calibration_images'] == NUM_CALIB
    float_model, model = onnx.load(int8_run['model']), onnx.load(int8_run['out'])
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {'', 'ai.onnx'}
    assert not [n.op_type for n in model.graph.node if n.op_type.startswith(('QLinear', 'ConvInteger'))]
    expected = _float_conv_params(float_model)
    network, head_outputs = _network_convs(float_model)
    assert head_outputs and len(network) > 5 * len(head_outputs)
    convs = [n for n in model.graph.node if n.op_type == 'Conv']
    assert sorted(n.name for n in convs) == sorted(expected)  # every float conv, nothing else
    values, producer = _constants(model), {o: n for n in model.graph.node for o in n.output}
    for conv in convs:
        act, weight, *bias = (producer.get(i) for i in conv.input)
        assert act.op_type == 'DequantizeLinear', conv.name  # every conv reads int8 activations
        assert producer[act.input[0]].op_type == 'QuantizeLinear', conv.name
        assert values[act.input[2]].dtype == np.uint8, conv.name  # activations uint8 ...
        w_float, b_float = expected[conv.name]
        if conv.name in head_outputs:  # the head's outputs: float weights, float result
            assert weight is None and np.array_equal(values[conv.input[1]], w_float), conv.name
            assert all(u.op_type != 'QuantizeLinear' for u in model.graph.node if conv.output[0] in u.input)
            continue
        q, scale, zero = (values[i] for i in weight.input)
        assert q.dtype == np.int8 and not zero.any(), conv.name  # ... weights symmetric int8 ...
        assert scale.shape == (w_float.shape[0],), conv.name  # ... one scale per output channel
        step = scale.reshape(-1, 1, 1, 1)
        assert (np.abs(q * step - w_float) <= 0.5 * step * (1 + 1e-5)).all(), conv.name
        assert len(bias) == (b_float is not None), conv.name
        if bias:
            assert bias[0].op_type == 'DequantizeLinear', conv.name
            q, scale, _ = (values[i] for i in bias[0].input)
            assert q.dtype == np.int32, conv.name
            assert (np.abs(q * scale - b_float) <= 0.5 * scale * (1 + 1e-5)).all(), conv.name
        # ... and so does what reads its output: the network stays int8 between layers
        users = [u for u in model.graph.node if conv.output[0] in u.input]
        assert [u.op_type for u in users] == ['QuantizeLinear'], conv.name
    # the operators between convolutions (residual and BiFPN additions, fusion weights, resize,
    # max-pool) read dequantized int8 tensors too
    between = [n for n in model.graph.node if n.op_type in ('Add', 'Mul', 'Resize', 'MaxPool')
               and any(producer.get(i) is not None and producer[i].op_type == 'DequantizeLinear'
                       for i in n.input)]
    assert len(between) >= sum(n.op_type in ('Resize', 'MaxPool') for n in float_model.graph.node)
    ops = [n.op_type for n in model.graph.node]
    float_ops = [n.op_type for n in float_model.graph.node]
    for op in POST_PROCESSING_OPS:  # scores, top-k and NMS stay float, all of them
        assert ops.count(op) == float_ops.count(op), op
    for node in model.graph.node:
        if node.op_type in POST_PROCESSING_OPS:
            assert all(producer.get(i) is None or producer[i].op_type != 'DequantizeLinear'
                       for i in node.input), node.name


def test_int8_network_runs_as_fused_int8_kernels(int8_run):
    """In ONNX Runtime's optimized graph >= 90 % of the convolution multiply-adds run in int8 kernels
    (``QLinearConv``), not as float ``Conv`` between dequantize and quantize, and no float result is
    quantized again between them (a conv-only quantization fuses its convolutions too, but dequantizes
    and requantizes around every activation, addition, resize and max-pool: 96 times in this detector)."""
    from fcos_plugin.deploy.inspection import conv_kernels, int8_conv_fraction, requantizations
    x = np.random.default_rng(0).standard_normal((1, 3, 320, 320)).astype(np.float32)
    kernels = conv_kernels(int8_run['out'], x)
    float_kernels = conv_kernels(int8_run['model'], x)
    # the same convolutions, counted the same way, in both models
    assert sum(k.macs for k in kernels) == sum(k.macs for k in float_kernels) > 0
    assert not any(k.int8 for k in float_kernels)
    fraction = int8_conv_fraction(kernels)
    assert fraction >= 0.9, (fraction, [(k.name, k.op_type) for k in kernels if not k.int8][:20])
    assert requantizations(int8_run['out']) == 0


def test_fusion_weights_are_folded_into_scales(demo_trained, int8_run):
    """The BiFPN's fusion weights are constants of a trained model: the int8 graph multiplies by none of
    them (each ``QLinearMul`` cost ~16 us) but reads each fusion input at its scale times its weight.
    The reference is the checkpoint: ``relu(v) / (sum(relu(v)) + eps)`` of every fusion module."""
    import torch

    from fcos_plugin.models.necks.bifpn import FUSION_EPS
    state = torch.load(demo_trained['checkpoint'], map_location='cpu', weights_only=False)['state_dict']
    expected = []
    for key, v in state.items():
        if key.startswith('neck.') and key.endswith('fusion.weight'):
            w = torch.relu(v)
            expected += (w / (w.sum() + FUSION_EPS)).tolist()
    assert len(expected) > 20 and min(expected) > 0
    model = onnx.load(int8_run['out'])
    values, producer = _constants(model), {o: n for n in model.graph.node for o in n.output}
    assert not [n.name for n in model.graph.node if n.op_type == 'Mul' and n.name.startswith('/neck/')]
    ratios = {}  # folded scale -> folded scale / the scale its input was quantized at
    for dq in model.graph.node:
        if dq.op_type == 'DequantizeLinear' and dq.input[1].endswith('_folded_scale'):
            source = producer[dq.input[0]]  # the fusion input's quantization
            assert source.op_type == 'QuantizeLinear', dq.name
            assert values[dq.input[2]] == values[source.input[2]], dq.name  # read at its zero point
            ratios[dq.input[1]] = float(values[dq.input[1]] / values[source.input[1]])
    assert int8_run['report']['quantization']['folded_scales'] == len(ratios) == len(expected)
    np.testing.assert_allclose(sorted(ratios.values()), sorted(expected), rtol=1e-4)


def test_int8_map_within_one_point_of_float(int8_run):
    report = int8_run['report']
    assert report['float']['bbox_mAP'] > 0.1
    assert report['int8']['bbox_mAP'] >= report['float']['bbox_mAP'] - 0.010, report


def test_report_equals_reference_evaluations(int8_run, tmp_path):
    report, model, out = int8_run['report'], int8_run['model'], int8_run['out']
    models = dict(float=model, int8=out)
    ref = {name: reference_evaluation(int8_run['data_root'], path, NUM_IMAGES)
           for name, path in models.items()}
    # the comparison can tell the two models apart: quantization moves the trained model's metrics
    assert ref['float'][0] != ref['int8'][0]
    for name, path in models.items():
        assert report[name]['model'] == osp.abspath(path)
        assert report[name]['metrics'] == ref[name][0], name
        assert report[name]['bbox_mAP'] == ref[name][0]['coco/bbox_mAP']
    assert ref['float'][0]['coco/bbox_mAP'] > 0.1

    metrics_json = str(tmp_path / 'metrics.json')  # the float model through tools/deploy/test_onnx.py
    proc = subprocess.run(run_tool('tools/deploy/test_onnx.py', DEMO_CFG, model, '--out', metrics_json,
                                   '--num-images', str(NUM_IMAGES), '--cfg-options',
                                   *data_options(int8_run['data_root'], ('val',))),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(metrics_json) as f:
        assert json.load(f)['metrics'] == report['float']['metrics']

    # timed on the first val image at the size the evaluation feeds the (dynamic) model: 320x320
    latency = report['latency']
    assert latency['input_shape'] == ref['float'][1] == [1, 3, 320, 320]
    assert latency['image'] == ref['float'][2]
    assert (latency['threads'], latency['runs']) == (2, 10)
    for name in ('float', 'int8'):
        assert np.isfinite(report[name]['latency_ms']) and report[name]['latency_ms'] > 0


def test_static_export_of_another_size(demo_trained, tmp_path):
    from fcos_plugin.deploy import DeployError, check_input_shape, export_onnx, load_deploy_cfg
    root = demo_trained['data_root']
    paths = export_onnx(model_cfg(DEMO_CFG, root), demo_trained['checkpoint'], str(tmp_path / 'static'),
                        onnx_name='fcos.onnx', shape=STATIC_HW, log=lambda s: None)
    model, out = paths['onnx'], str(tmp_path / 'static' / 'fcos_int8.onnx')
    static = [1, 3, *STATIC_HW]
    assert _input_dims(model) == static

    # contradicting deploy configs: refused before calibration, in seconds, without a traceback
    for deploy_cfg, says in (('detection_onnxruntime_dynamic.py', 'dynamic'),
                             ('detection_onnxruntime_static-512x512.py', 'static 512x512')):
        proc = _quantize(DEMO_CFG, model, root, '--out', out, '--deploy-cfg',
                         osp.join(REPO, 'configs', 'deploy', deploy_cfg))
        assert proc.returncode != 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
        assert f'static {STATIC_HW[0]}x{STATIC_HW[1]}' in proc.stderr and says in proc.stderr
        assert 'calibration images' not in proc.stdout and not osp.exists(out)
    # an export_meta.json that says another size
    other = _copy_model_dir(model, str(tmp_path / 'other'))
    meta_path = osp.join(osp.dirname(other), 'export_meta.json')
    with open(meta_path) as f:
        meta = json.load(f)
    with open(meta_path, 'w') as f:
        json.dump(dict(meta, input_shape_hw=[512, 512]), f)
    with pytest.raises(DeployError, match='export_meta.json says static 512x512'):
        check_input_shape(other, load_deploy_cfg(paths['deploy_cfg']))

    proc = _quantize(DEMO_CFG, model, root, '--out', out, '--num-calib', '4', '--num-images', '4')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(osp.splitext(out)[0] + '_report.json') as f:
        report = json.load(f)
    assert _input_dims(out) == static
    assert report['latency']['input_shape'] == static
    for name, path in (('float', model), ('int8', out)):
        metrics, shape, image = reference_evaluation(root, path, 4)
        assert report[name]['metrics'] == metrics, name
        assert shape == static and image == report['latency']['image']
        assert report[name]['latency_ms'] > 0


def test_refuses_to_overwrite(int8_run):
    proc = subprocess.run(run_tool('tools/deploy/quantize_onnx.py', DEMO_CFG, int8_run['model'], '--out',
                                   int8_run['out'], '--no-eval'), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr and '--force' in proc.stderr
