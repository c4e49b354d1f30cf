"""Parameters and FLOPs of a detector (pre-processing and NMS excluded), per module and in total.

Convention: one multiply-add = one FLOP for convolutions and matrix products (mmengine/fvcore's, and the one
EfficientDet's "2.54 GFLOPs" uses); every elementwise operator (activations, additions, multiplications,
sigmoid, sqrt, BN at inference ...) costs one FLOP per output element; reductions (mean, sum, max, min) one
per input element; max-pooling one per output element and kernel position. mmengine's counter ignores
activations and a few elementwise ops silently; here every operator in the traced graph is either counted
or listed as pure data movement (reshape, cat, pad, ...), and anything else is reported as uncounted.

The convolution/linear part is cross-checked against ``torch.utils.flop_counter.FlopCounterMode``, an
independent counter (dispatcher-based instead of JIT-trace-based).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from mmengine.analysis.print_helper import complexity_stats_table
from torch.utils.flop_counter import FlopCounterMode

#: ops that cost one FLOP per output element
ELEMENTWISE_OPS = (
    'aten::add', 'aten::add_', 'aten::sub', 'aten::sub_', 'aten::mul', 'aten::mul_', 'aten::div',
    'aten::div_', 'aten::relu', 'aten::relu_', 'aten::relu6', 'aten::hardtanh', 'aten::hardtanh_',
    'aten::sigmoid', 'aten::sigmoid_', 'aten::silu', 'aten::silu_', 'aten::exp', 'aten::sqrt',
    'aten::clamp', 'aten::clamp_', 'aten::clamp_min', 'aten::neg', 'aten::rsub', 'aten::pow',
    'aten::leaky_relu', 'aten::hardswish', 'aten::hardsigmoid',
)
#: reductions: one FLOP per *input* element (an N-to-1 mean or sum costs N, not 1)
REDUCTION_OPS = ('aten::mean', 'aten::sum', 'aten::max', 'aten::amax', 'aten::min', 'aten::amin')
#: ops that move or select data and cost nothing
DATA_MOVEMENT_OPS = (
    'aten::cat', 'aten::constant_pad_nd', 'aten::pad', 'aten::view', 'aten::reshape', 'aten::permute',
    'aten::flatten', 'aten::contiguous', 'aten::size', 'aten::slice', 'aten::select', 'aten::stack',
    'aten::unsqueeze', 'aten::squeeze', 'aten::expand', 'aten::to', 'aten::dropout', 'aten::Int',
    'aten::ScalarImplicit', 'aten::detach', 'aten::split', 'aten::chunk', 'aten::transpose',
    'aten::zeros', 'aten::ones', 'aten::full', 'aten::empty', 'aten::new_zeros', 'aten::type_as',
    'aten::floor', 'aten::floor_divide', 'aten::ceil', 'aten::copy_', 'aten::split_with_sizes',
    'aten::unbind', 'aten::zeros_like', 'aten::full_like', 'aten::t', 'aten::expand_as', 'aten::new_empty',
    'aten::remainder', 'aten::arange', 'aten::narrow', 'aten::index',
)
#: multiply-add ops, by the names mmengine's ``by_operator`` reports them under
MATMUL_OPS = ('conv', 'addmm', 'linear', 'matmul', 'mm', 'bmm', 'einsum')


def _per_output_element(inputs, outputs) -> int:
    shape = get_shape(outputs[0])
    return prod(shape) if shape is not None else 0


def _per_input_element(inputs, outputs) -> int:
    shape = get_shape(inputs[0])
    return prod(shape) if shape is not None else 0


def _const_ints(value) -> list[int]:
    """A constant int list argument of a traced op (possibly built by prim::ListConstruct)."""
    ivalue = value.toIValue()
    if ivalue is not None:
        return list(ivalue) if isinstance(ivalue, (list, tuple)) else [ivalue]
    return [int(v.toIValue()) for v in value.node().inputs()]


def _max_pool(inputs, outputs) -> int:
    return _per_output_element(inputs, outputs) * prod(_const_ints(inputs[1]))


@dataclass
class ComplexityReport:
    params: int
    flops: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    matmul_flops: int
    reference_matmul_flops: int
    data_movement_ops: list[str]
    uncounted_ops: dict[str, int] = field(default_factory=dict)
    table: str = ''

    @property
    def cross_check_error(self) -> float:
        return abs(self.matmul_flops - self.reference_matmul_flops) / max(self.reference_matmul_flops, 1)


class _TensorForward(torch.nn.Module):
    """The detector from input tensor to raw head outputs (no pre-processing, no NMS)."""

    def __init__(self, detector: torch.nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor):
        return self.detector._forward(x)


def detector_complexity(detector: torch.nn.Module, shape: tuple[int, ...], max_depth: int = 3
                        ) -> ComplexityReport:
    """Count params and FLOPs of ``detector._forward`` on a zero input of ``shape`` (N, C, H, W)."""
    detector = detector.eval()
    model = _TensorForward(detector).eval()
    x = torch.zeros(shape)
    analyzer = FlopAnalyzer(model, (x,))
    analyzer.set_op_handle(**{op: _per_output_element for op in ELEMENTWISE_OPS})
    analyzer.set_op_handle(**{op: _per_input_element for op in REDUCTION_OPS})
    analyzer.set_op_handle('aten::max_pool2d', _max_pool)
    analyzer._ignored_ops = set(DATA_MOVEMENT_OPS)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        total = analyzer.total()
        by_op = dict(analyzer.by_operator())
        uncounted = dict(analyzer.unsupported_ops())
        by_module = {k.replace('detector.', '', 1) if k else 'model': v
                     for k, v in analyzer.by_module().items()}
        seen = _traced_ops(model, x)
        with FlopCounterMode(display=False) as counter:
            model(x)
    table = complexity_stats_table(analyzer, max_depth=max_depth + 1, show_param_shapes=False)
    table = table.replace(' detector.', ' ')
    return ComplexityReport(
        params=sum(p.numel() for p in detector.parameters()), flops=int(total),
        by_module=by_module, by_operator=by_op,
        matmul_flops=int(sum(v for k, v in by_op.items() if k in MATMUL_OPS)),
        reference_matmul_flops=int(counter.get_total_flops() // 2),  # it counts a multiply-add as 2
        data_movement_ops=sorted(seen & set(DATA_MOVEMENT_OPS)), uncounted_ops=uncounted, table=table)


def _traced_ops(model: torch.nn.Module, x: torch.Tensor) -> set[str]:
    graph, _ = torch.jit._get_trace_graph(model, (x,))
    return {node.kind() for node in graph.nodes()}
