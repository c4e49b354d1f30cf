"""tools/deploy/quantize_onnx.py: int8 convolutions calibrated on the LMDB train set, float
post-processing, and a report with the mAP and latency of both models."""
from __future__ import annotations

import json
import os.path as osp
import subprocess

import numpy as np
import onnx
import onnxruntime as ort

from ..conftest import REPO, run_tool
from .conftest import DEMO_CFG, data_options

POST_PROCESSING_OPS = ('Sigmoid', 'Sqrt', 'TopK', 'NonMaxSuppression', 'ReduceMax')


def test_int8_model_quantizes_convs_only_and_is_evaluated(demo_packed, demo_onnx, tmp_path):
    out = osp.join(osp.dirname(demo_onnx), 'fcos_int8.onnx')  # beside pipeline.json / deploy_cfg.py
    proc = subprocess.run(run_tool('tools/deploy/quantize_onnx.py', DEMO_CFG, demo_onnx, '--out', out,
                                   '--num-calib', '8', '--num-images', '8', '--cfg-options',
                                   *data_options(demo_packed, ('train', 'val'))),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert '8 calibration images' in proc.stdout

    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {'', 'ai.onnx'}
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == 'Conv']
    float_convs = sum(n.op_type == 'Conv' for n in onnx.load(demo_onnx).graph.node)
    assert len(convs) > 100
    for conv in convs:  # int8 activations and weights into every convolution
        assert producer[conv.input[0]].op_type == 'DequantizeLinear', conv.name
        assert producer[conv.input[1]].op_type == 'DequantizeLinear', conv.name
    assert len(convs) <= float_convs
    for node in model.graph.node:  # scores, top-k and NMS stay float
        if node.op_type in POST_PROCESSING_OPS:
            assert all(producer.get(i) is None or producer[i].op_type != 'DequantizeLinear'
                       for i in node.input), node.name

    report_path = osp.splitext(out)[0] + '_report.json'
    with open(report_path) as f:
        report = json.load(f)
    for name in ('float', 'int8'):
        assert 0.0 <= report[name]['bbox_mAP'] <= 1.0
        assert report[name]['latency_ms_1x3x512x512_2threads'] > 0
    assert report['quantization']['calibration_images'] == 8

    # the int8 graph runs and detects like the float one
    x = np.random.RandomState(0).standard_normal((1, 3, 384, 384)).astype(np.float32)
    outs = [ort.InferenceSession(p, providers=['CPUExecutionProvider']).run(None, {'input': x})
            for p in (demo_onnx, out)]
    (fd, _), (qd, _) = outs
    assert (qd[0, :, 4] > 0).sum() > 0
    assert abs(float(qd[0, 0, 4]) - float(fd[0, 0, 4])) < 0.05

    proc = subprocess.run(run_tool('tools/deploy/quantize_onnx.py', DEMO_CFG, demo_onnx, '--out', out,
                                   '--no-eval'), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr and '--force' in proc.stderr
