"""What ONNX Runtime really runs: the convolutions of a model's *optimized* graph (int8 kernels or
float), their multiply-adds, and where the time goes per operator type (ONNX Runtime's profiler).

A QDQ model says which tensors *may* be int8; only ONNX Runtime's graph optimizer decides which
``DequantizeLinear -> Conv -> QuantizeLinear`` groups become one int8 kernel (``QLinearConv``, or
``com.microsoft`` ``QLinear*``/``NhwcQLinearConv``) and which stay a float ``Conv`` between
dequantize/quantize pairs. :func:`conv_kernels` reads the graph ONNX Runtime writes to
``optimized_model_filepath`` and runs it once to learn every convolution's output size, so the
multiply-adds are counted for the input actually given.
"""
from __future__ import annotations

import collections
import json
import os
import os.path as osp
import tempfile
from typing import NamedTuple

import numpy as np

__all__ = ['ConvKernel', 'INT8_CONV_OPS', 'conv_kernels', 'int8_conv_fraction', 'op_time_profile',
           'requantizations']

#: Convolution kernels of ONNX Runtime's optimized graph that compute in int8.
INT8_CONV_OPS = frozenset({'QLinearConv', 'NhwcQLinearConv', 'ConvInteger'})
#: ... and those that compute in float (``FusedConv``: conv + activation; ``NchwcConv``: blocked layout).
FLOAT_CONV_OPS = frozenset({'Conv', 'FusedConv', 'NchwcConv', 'NhwcFusedConv', 'NhwcConv'})


class ConvKernel(NamedTuple):
    """One convolution of the optimized graph."""

    name: str
    op_type: str
    int8: bool
    macs: int  # multiply-adds for the given input


def _optimized_graph(model: str, level: str, path: str):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.optimized_model_filepath = path
    options.intra_op_num_threads = 1
    ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])


def conv_kernels(model: str, x: np.ndarray, level: str = 'ORT_ENABLE_EXTENDED') -> list[ConvKernel]:
    """Every convolution of ONNX Runtime's optimized graph of ``model`` and its multiply-adds on ``x``.

    Args:
        model: ``.onnx`` path (input named ``input``).
        x: an input of the size to count for.
        level: ONNX Runtime's optimization level name; ``ORT_ENABLE_EXTENDED`` holds every QDQ fusion
            and is still plain ONNX/``com.microsoft`` ops (``ORT_ENABLE_ALL`` adds layout changes).

    Returns:
        list[ConvKernel]: in graph order.
    """
    import onnx
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        opt_path = osp.join(tmp, 'optimized.onnx')
        _optimized_graph(model, level, opt_path)
        graph_model = onnx.load(opt_path)
        inits = {t.name: t for t in graph_model.graph.initializer}
        convs = [n for n in graph_model.graph.node if n.op_type in INT8_CONV_OPS | FLOAT_CONV_OPS]
        # run the optimized graph once, with every convolution output exposed, to learn its size
        existing = {o.name for o in graph_model.graph.output}
        for n in convs:
            if n.output[0] not in existing:
                graph_model.graph.output.append(onnx.ValueInfoProto(name=n.output[0]))
        probe = osp.join(tmp, 'probe.onnx')
        onnx.save(graph_model, probe)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(probe, options, providers=['CPUExecutionProvider'])
        names = [o.name for o in session.get_outputs()]
        shapes = dict(zip(names, (a.shape for a in session.run(None, {'input': x}))))
    kernels = []
    for n in convs:
        # the weight: input 1 (Conv, FusedConv, ConvInteger), input 3 (QLinearConv: x, x_s, x_zp, w, ...)
        w_name = n.input[3] if n.op_type in ('QLinearConv', 'NhwcQLinearConv') else n.input[1]
        if w_name not in inits:
            raise ValueError(f'{model}: weight {w_name!r} of {n.op_type} {n.name!r} is not a constant')
        w_shape = list(inits[w_name].dims)  # (C_out, C_in / groups, kh, kw)
        out_shape = shapes[n.output[0]]
        spatial = out_shape[1:3] if n.op_type.startswith('Nhwc') else out_shape[2:]
        macs = int(np.prod(w_shape)) * int(np.prod(spatial)) * int(out_shape[0])
        kernels.append(ConvKernel(n.name, n.op_type, n.op_type in INT8_CONV_OPS, macs))
    return kernels


def requantizations(model: str, level: str = 'ORT_ENABLE_EXTENDED') -> int:
    """``QuantizeLinear`` nodes left in ONNX Runtime's optimized graph of ``model`` other than those of
    the graph's input: each is a float result quantized again -- an operator between int8 kernels that
    ran in float (dequantize, float op, quantize). 0 for a network that stays int8 between layers; a
    conv-only quantization of this detector has one per convolution output that meets a float operator."""
    import onnx
    with tempfile.TemporaryDirectory() as tmp:
        opt_path = osp.join(tmp, 'optimized.onnx')
        _optimized_graph(model, level, opt_path)
        graph = onnx.load(opt_path).graph
    inputs = {i.name for i in graph.input}
    return sum(n.op_type == 'QuantizeLinear' and n.input[0] not in inputs for n in graph.node)


def int8_conv_fraction(kernels: list[ConvKernel]) -> float:
    """Fraction of the convolution multiply-adds that run in int8 kernels."""
    total = sum(k.macs for k in kernels)
    return sum(k.macs for k in kernels if k.int8) / total if total else 0.0


def op_time_profile(model: str, x: np.ndarray, threads: int = 2, runs: int = 10) -> dict[str, float]:
    """Milliseconds per run spent in each operator type (ONNX Runtime's profiler, default optimization
    level), averaged over ``runs`` runs after a warm-up run (each node's first time dropped), largest
    first."""
    import onnxruntime as ort
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = osp.join(tmp, 'profile')
        session = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])
        for _ in range(runs + 1):
            session.run(None, {'input': x})
        trace = session.end_profiling()
        with open(trace) as f:
            events = json.load(f)
        os.remove(trace)
    per_run = collections.defaultdict(list)
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time'):
            per_run[e['args']['op_name']].append(e['dur'])
    # every node runs once per run: drop each node's first (warm-up) time
    first: dict[str, int] = {}
    for e in events:
        if e.get('cat') == 'Node' and e.get('name', '').endswith('_kernel_time'):
            first.setdefault(e['name'], (e['args']['op_name'], e['dur']))
    for op, dur in first.values():
        per_run[op].remove(dur)
    totals = {op: sum(d) / runs / 1000 for op, d in per_run.items()}
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))
