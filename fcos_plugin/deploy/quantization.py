"""Static int8 quantization of an exported model with ONNX Runtime (as mmdeploy keeps calibration in
``apis/calibration.py``), calibrated on the config's train images through the test pipeline.

What is quantized is the *network*: every operator from the input up to the head's last convolutions
-- convolutions, activations, the residual and BiFPN additions and weighted fusions, resize, max-pool,
concatenation -- so that ONNX Runtime's graph optimizer can run it as one chain of int8
kernels (``QLinearConv``, ``QLinearAdd``, ``QLinearMul``, ...) with no dequantize/quantize round trip
between layers (:func:`network_nodes`). What stays float: the int64 shape arithmetic (resize targets,
point grids), the post-processing (sigmoid, score, box decoding, top-k, NMS) and, by default, the head's
output convolutions (``float_head_outputs``: their outputs are the logits and box distances, which HAT
also keeps float; benchmarks/RESULTS.md, "int8: where accuracy and time go", measures what they cost).
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import shutil
import tempfile
import time
from collections.abc import Iterator

import numpy as np
from mmengine.config import Config

from ..utils.cpu import has_int8_dot_product
from .checks import check_onnx_model, prepare_exported_model
from .common import DeployError, Log, ensure_free
from .configs import static_input_shape
from .data import build_dataloader, static_pipeline

__all__ = ['CALIBRATION_METHODS', 'network_nodes', 'quantize_int8']

#: ``--calib-method`` names: ONNX Runtime's calibration methods.
CALIBRATION_METHODS = ('MinMax', 'Percentile', 'Entropy')
CONV_OPS = ('Conv',)


def _calibration_batches(model_cfg: Config, deploy_cfg: Config,
                         num_images: int) -> Iterator[np.ndarray]:
    """(1, 3, H, W) float32 inputs from the train set, preprocessed exactly as at test time."""
    from mmdet.registry import MODELS
    pipeline = static_pipeline(model_cfg.test_pipeline, static_input_shape(deploy_cfg))
    pipeline = [t for t in pipeline if t['type'] != 'LoadAnnotations']
    loader = build_dataloader(model_cfg, 'train', pipeline, batch_size=1, num_images=num_images)
    preprocessor = MODELS.build(copy.deepcopy(model_cfg.model.data_preprocessor))
    for data in loader:
        yield preprocessor(data, False)['inputs'].numpy()


def network_nodes(model, float_head_outputs: bool = True, exclude: tuple[str, ...] = (),
                  op_types: tuple[str, ...] | None = None) -> list[str]:
    """Names of the nodes of ``model`` (an ``onnx.ModelProto``) to quantize.

    The network is every node from which a convolution can be reached (and the convolutions); nodes
    after the last convolutions are post-processing. Shape arithmetic (nodes computing from ``Shape``
    outputs and constants only, e.g. the BiFPN's resize target sizes) is left out: it is int64.

    Args:
        model: the (pre-processed) float model.
        float_head_outputs: leave the last convolutions (those with no convolution after them: the
            head's class, box and centerness outputs) float.
        exclude: node names, or name prefixes, kept float in addition (sensitivity analysis).
        op_types: quantize only nodes of these types (``('Conv',)``: convolutions only, every other
            operator float between dequantize/quantize pairs -- for comparison); None: all.
    """
    graph = model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # shape arithmetic: computed from Shape outputs and constants only
    constants = {t.name for t in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == 'Constant' for o in n.output}
    shape_tensors: set[str] = set()
    for node in graph.node:  # ONNX nodes are topologically sorted
        if node.op_type == 'Shape' or (
                node.op_type != 'Constant' and node.input
                and all(i in shape_tensors or i in constants or not i for i in node.input)
                and any(i in shape_tensors for i in node.input)):
            shape_tensors.update(node.output)
    reaches_conv: dict[str, bool] = {}
    for node in reversed(graph.node):
        below = [c for o in node.output for c in consumers.get(o, [])]
        reaches_conv[node.name] = any(c.op_type in CONV_OPS or reaches_conv.get(c.name, False)
                                      for c in below)
    keep = []
    for node in graph.node:
        if node.op_type == 'Constant' or all(o in shape_tensors for o in node.output):
            continue
        if node.op_type in CONV_OPS:
            if float_head_outputs and not reaches_conv[node.name]:
                continue
        elif not reaches_conv[node.name]:
            continue
        if any(node.name == e or node.name.startswith(e) for e in exclude):
            continue
        if op_types is not None and node.op_type not in op_types:
            continue
        keep.append(node.name)
    return keep


def _read_shapes_before_dequantize(path: str) -> None:
    """Make every ``Shape`` that reads a ``DequantizeLinear`` output read its int8 input instead (same
    shape), and drop the dequantizations nothing else reads. The quantizer puts ``Shape`` (of the BiFPN's
    resize targets, of the head's feature maps) behind a dequantization, so ONNX Runtime would dequantize
    a whole feature map to learn its size."""
    import onnx
    model = onnx.load(path)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == 'Shape' and node.input[0] in producer \
                and producer[node.input[0]].op_type == 'DequantizeLinear':
            node.input[0] = producer[node.input[0]].input[0]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == 'DequantizeLinear' and n.output[0] not in used]
    for node in dead:
        graph.node.remove(node)
    onnx.save(model, path)


def _fold_constant_scales(path: str) -> int:
    """Fold each multiplication of a quantized activation by a quantized positive constant scalar -- the
    BiFPN's normalised fusion weights -- into the scale of the dequantizations that read its result:
    ``DQ(x; s, z) -> Mul(DQ(w)) -> Q(y; s_y, z_y) -> DQ(y; s_y, z_y)`` becomes ``DQ(x; s * w, z)``.

    The value read is the same, less one rounding (to ``s_y``). ONNX Runtime otherwise runs one
    ``QLinearMul`` per fusion input (57 in fcos_effb0, 1.0 ms of its ONNX Runtime profile at 320x320:
    benchmarks/RESULTS.md, "int8: where accuracy and time go"); folded, the fusion's inputs go straight
    into its ``QLinearAdd``,
    which takes each input at a scale of its own. Returns the number of multiplications folded."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def value(dq) -> np.ndarray | None:  # a DequantizeLinear of initializers, dequantized
        if not all(i in inits for i in dq.input if i):
            return None
        q, scale = (numpy_helper.to_array(inits[i]) for i in dq.input[:2])
        zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else 0
        return (q.astype(np.float64) - np.asarray(zero, np.float64)) * scale

    removed, folded = [], 0
    for mul in list(graph.node):
        dqs = [producer.get(i) for i in mul.input]
        if mul.op_type != 'Mul' or any(d is None or d.op_type != 'DequantizeLinear' for d in dqs):
            continue
        values = [value(d) for d in dqs]
        if sum(v is not None for v in values) != 1:
            continue
        k = 0 if values[0] is not None else 1
        w, x_dq = values[k], dqs[1 - k]
        q_nodes = readers.get(mul.output[0], [])
        if w.size != 1 or float(w.reshape(-1)[0]) <= 0 or len(q_nodes) != 1 \
                or q_nodes[0].op_type != 'QuantizeLinear' or mul.output[0] in outputs:
            continue
        q = q_nodes[0]
        after = readers.get(q.output[0], [])
        if q.output[0] in outputs or not after or any(r.op_type != 'DequantizeLinear' for r in after) \
                or x_dq.input[1] not in inits or numpy_helper.to_array(inits[x_dq.input[1]]).size != 1:
            continue
        scale = numpy_helper.to_array(inits[x_dq.input[1]])
        name = f'{mul.name or mul.output[0]}_folded_scale'
        graph.initializer.append(numpy_helper.from_array(
            (scale.astype(np.float64) * float(w.reshape(-1)[0])).astype(scale.dtype), name))
        for r in after:
            del r.input[:]
            r.input.extend([x_dq.input[0], name, *x_dq.input[2:3]])
        removed += [mul, q]
        folded += 1
    for node in removed:
        graph.node.remove(node)
    # dequantizations and initializers nothing reads any more
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == 'DequantizeLinear' and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    onnx.save(model, path)
    return folded


def quantize_int8(model_cfg: str | Config,
                  onnx_in: str,
                  onnx_out: str,
                  deploy_cfg: str | Config | None = None,
                  num_calib: int = 32,
                  per_channel: bool = True,
                  reduce_range: bool | None = None,
                  calibrate_method: str = 'MinMax',
                  percentile: float = 99.999,
                  float_head_outputs: bool = True,
                  exclude: tuple[str, ...] = (),
                  op_types: tuple[str, ...] | None = None,
                  fold_scales: bool = True,
                  force: bool = False,
                  log: Log = print) -> dict[str, object]:
    """Static int8 quantization (ONNX Runtime, QDQ) of the network of an exported model.

    int8 per-channel symmetric weights, uint8 asymmetric activations, int32 biases; the nodes are
    :func:`network_nodes`. Calibration uses ``num_calib`` images of the config's train set through the
    test pipeline.

    Args:
        reduce_range: 7-bit weights; ``None`` chooses it on CPUs without VNNI/AMX
            (:func:`fcos_plugin.utils.cpu.has_int8_dot_product`), where 8-bit u8 x s8 products saturate.
        calibrate_method: ``MinMax``, ``Percentile`` (``percentile`` of each activation's absolute
            values) or ``Entropy``.
        float_head_outputs, exclude, op_types: see :func:`network_nodes`.
        fold_scales: fold the multiplications by constant scalars (the BiFPN's fusion weights) into
            the dequantization scales (:func:`_fold_constant_scales`).

    Returns:
        dict: ``quantized`` and ``float`` node counts, ``calibration_images``, the settings,
        ``folded_scales`` (constant multiplications folded), ``seconds``.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if osp.abspath(onnx_in) == osp.abspath(onnx_out):
        raise DeployError('the int8 model must be written to another file than the float model')
    ensure_free([onnx_out], force)
    model_cfg, deploy_cfg, _ = prepare_exported_model(model_cfg, onnx_in, deploy_cfg)
    if calibrate_method not in CALIBRATION_METHODS:
        raise DeployError(f'unknown calibration method {calibrate_method!r}; use one of '
                          f'{", ".join(CALIBRATION_METHODS)}')
    method = getattr(CalibrationMethod, calibrate_method)
    if reduce_range is None:
        reduce_range = not has_int8_dot_product()
        if reduce_range:
            log('note: this CPU has no VNNI/AMX int8 dot product: 7-bit weights (reduce_range) so that '
                'u8 x s8 products do not saturate')
    batches = list(_calibration_batches(model_cfg, deploy_cfg, num_calib))
    if not batches:
        raise DeployError(f'no calibration images in the train set of {model_cfg.filename}')

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {'input': x}

        def rewind(self):
            self._it = iter(batches)

    out_dir = osp.dirname(osp.abspath(onnx_out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir, prefix='.quant-')
    t0 = time.time()
    try:
        pre = osp.join(tmp, 'pre.onnx')
        try:
            # shape inference + graph optimisation, as ONNX Runtime recommends before quantizing
            quant_pre_process(onnx_in, pre, skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001  (optional step: quantize the raw export instead)
            log(f'note: quant_pre_process failed ({type(e).__name__}); quantizing the model as is')
            shutil.copy(onnx_in, pre)
        pre_model = onnx.load(pre)
        nodes = network_nodes(pre_model, float_head_outputs, tuple(exclude),
                              None if op_types is None else tuple(op_types))
        chosen = set(nodes)
        others = [n.name for n in pre_model.graph.node if n.name not in chosen]
        out_tmp = osp.join(tmp, 'int8.onnx')
        extra = dict(ActivationSymmetric=False, WeightSymmetric=True)
        if calibrate_method == 'Percentile':
            extra['CalibPercentile'] = percentile
        quantize_static(
            pre, out_tmp, Reader(), quant_format=QuantFormat.QDQ, nodes_to_quantize=nodes,
            nodes_to_exclude=others, per_channel=per_channel, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options=extra)
        _read_shapes_before_dequantize(out_tmp)
        folded = _fold_constant_scales(out_tmp) if fold_scales else 0
        check_onnx_model(out_tmp)
        os.replace(out_tmp, onnx_out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.time() - t0
    log(f'int8 model written to {onnx_out}: {len(nodes)} nodes quantized, {len(others)} float, '
        f'{calibrate_method} over {len(batches)} calibration images'
        + (f', {folded} constant multiplications folded into scales' if folded else '')
        + f', {seconds:.1f} s')
    return dict(quantized=len(nodes), float=len(others), calibration_images=len(batches),
                calibrate_method=calibrate_method, per_channel=per_channel, reduce_range=reduce_range,
                float_head_outputs=float_head_outputs, folded_scales=folded, seconds=seconds)
