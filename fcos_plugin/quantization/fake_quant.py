"""Fake quantization as ONNX Runtime's int8 kernels compute it, with torch's own fake-quant operators.

* Weights: BatchNorm folded into the convolution on the fly (``w' = w * gamma / sqrt(var + eps)``,
  ``b' = beta - mean * gamma / sqrt(var + eps)`` (+ the conv bias times the same factor)), then
  **per output channel, symmetric int8**: ``scale_c = max|w'_c| / 127``, zero point 0
  (``torch.fake_quantize_per_channel_affine``, straight-through gradients). The bias is rounded to
  int32 with ``scale = input_scale * weight_scale_c``, as ONNX Runtime's ``QLinearConv`` adds it.
* Activations: **per tensor, uint8 asymmetric** (``torch.fake_quantize_per_tensor_affine``, 0..255)
  with a scale and zero point from the min/max range seen in calibration (ONNX Runtime's ``MinMax``:
  the range always contains 0, so 0 is exact); optionally the range follows an exponential moving
  average while training.

Every fake-quantized tensor carries its ``(scale, zero_point)`` as the attribute ``_fcos_qparams``, so
that a convolution knows its input scale (bias) and max-pool / resize / pad can re-quantize with
exactly their input's parameters (ONNX Runtime runs those in int8 only when in and out scales are
equal).

**Export.** Inside ``torch.onnx.export`` (mmdeploy's ``torch2onnx``) the same arithmetic is emitted
as ONNX Runtime's own QDQ layout: weights as *int8 constants* -> ``DequantizeLinear`` (axis 0),
biases as *int32 constants* -> ``DequantizeLinear``, activations ``QuantizeLinear -> DequantizeLinear``
with constant uint8 zero points. No BN or scale arithmetic is left for the graph optimizer to fold, so
ONNX Runtime fuses every ``DQ -> Conv -> Q`` into ``QLinearConv``.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ['ActQuant', 'QPARAMS_ATTR', 'const_dequant', 'fold_bn', 'qparams_of', 'quant_conv2d',
           'quantize_weight', 'requant_like', 'uint8_qparams']

QPARAMS_ATTR = '_fcos_qparams'
W_QMIN, W_QMAX = -128, 127  # int8 weights; scale = max|w| / 127 (symmetric, -128 unused)
A_QMIN, A_QMAX = 0, 255  # uint8 activations
INT32_MAX = 2**31 - 1
_TINY = 1e-8


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


def qparams_of(x: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(scale, zero_point)`` of a fake-quantized tensor (0-dim float32 / int32), None otherwise."""
    return getattr(x, QPARAMS_ATTR, None)


def _tag(x: Tensor, qparams: tuple[Tensor, Tensor]) -> Tensor:
    setattr(x, QPARAMS_ATTR, qparams)
    return x


def uint8_qparams(min_val: Tensor, max_val: Tensor) -> tuple[Tensor, Tensor]:
    """Scale and zero point of the range ``[min(min_val, 0), max(max_val, 0)]`` on 0..255, as ONNX
    Runtime's ``MinMax`` calibration computes them (zero point ``round(-min / scale)``)."""
    lo = torch.clamp(min_val, max=0.0)
    hi = torch.clamp(max_val, min=0.0)
    scale = torch.clamp((hi - lo) / (A_QMAX - A_QMIN), min=_TINY)
    zero_point = torch.clamp(torch.round(A_QMIN - lo / scale), A_QMIN, A_QMAX)
    return scale.float(), zero_point.to(torch.int32)


# ---- export: ONNX Runtime's QDQ layout ----------------------------------------------------------
#: Constant tensors handed from a forward to its symbolic by key (a symbolic gets only graph values
#: and Python scalars); filled during export only, one entry per weight/bias, taken by the symbolic.
_CONSTANTS: dict[int, tuple] = {}
_KEYS = itertools.count()


class _ConstDequant(torch.autograd.Function):
    """A constant integer tensor -> ``DequantizeLinear``: what ONNX Runtime's quantizer writes for
    weights (int8, per channel) and biases (int32). ``value``: its float value (PyTorch), not exported."""

    @staticmethod
    def forward(ctx, value, key):
        return value.clone()

    @staticmethod
    def symbolic(g, value, key):
        q, scale, zp, axis = _CONSTANTS.pop(key)
        args = [g.op('Constant', value_t=q), g.op('Constant', value_t=scale.float()),
                g.op('Constant', value_t=zp)]
        if axis is None:
            return g.op('DequantizeLinear', *args)
        return g.op('DequantizeLinear', *args, axis_i=axis)


def const_dequant(q: Tensor, scale: Tensor, zero_point: Tensor,
                  axis: int | None = None) -> Tensor:
    """Export form of an integer constant ``q`` (int8/uint8/int32) and its quantization parameters:
    ``DequantizeLinear(Constant(q), scale, zero_point)``; the float value in PyTorch."""
    def const(t: Tensor) -> Tensor:  # a plain constant, cut from the trace
        return torch.from_numpy(t.detach().cpu().numpy().copy())

    q, scale, zero_point = const(q), const(scale.float()), const(zero_point)
    shape = [-1] + [1] * (q.dim() - 1) if axis is not None else []
    value = torch.from_numpy(np.asarray((q.numpy().astype('float64') - zero_point.numpy().reshape(shape))
                                        * scale.numpy().reshape(shape), dtype=np.float32))
    key = next(_KEYS)
    _CONSTANTS[key] = (q, scale, zero_point, axis)
    return _ConstDequant.apply(value, key)


class _QDQ(torch.autograd.Function):
    """``QuantizeLinear -> DequantizeLinear`` of an activation with constant uint8 parameters."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float, zero_point: int) -> Tensor:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, A_QMIN, A_QMAX)

    @staticmethod
    def symbolic(g, x, scale: float, zero_point: int):
        s = g.op('Constant', value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op('Constant', value_t=torch.tensor(zero_point, dtype=torch.uint8))
        return g.op('DequantizeLinear', g.op('QuantizeLinear', x, s, z), s, z)


def _fake_quant(x: Tensor, qparams: tuple[Tensor, Tensor]) -> Tensor:
    scale, zp = qparams
    if _exporting():
        y = _QDQ.apply(x, float(scale), int(zp))
    else:
        y = torch.fake_quantize_per_tensor_affine(x, scale, zp, A_QMIN, A_QMAX)
    return _tag(y, qparams)


def requant_like(y: Tensor, x: Tensor) -> Tensor:
    """Re-quantize ``y`` (max-pool, nearest resize or zero padding of ``x``) with ``x``'s own parameters:
    numerically nothing changes, and ONNX Runtime keeps the operator in int8. ``y`` unchanged when
    ``x`` is not fake-quantized (float model, calibration)."""
    qparams = qparams_of(x)
    return y if qparams is None else _fake_quant(y, qparams)


class ActQuant(nn.Module):
    """uint8 per-tensor fake quantization of one activation, with its observed range.

    Buffers (saved in checkpoints): ``min_val``/``max_val`` (the range), ``scale``/``zero_point``
    (derived from it) and ``calibrated`` (0 until a range has been set: the tensor passes unquantized).

    Modes (``mode`` attribute, set for a whole model by :func:`~fcos_plugin.quantization.set_mode`):
    ``'quant'`` fake-quantizes; ``'observe'`` passes the float tensor through and widens the range
    (calibration); ``'float'`` passes it through.

    Args:
        momentum (float): ``0``: the calibrated range stays fixed while training; ``m > 0``: in training
            mode each batch's min/max moves it by ``m`` (exponential moving average).
    """

    def __init__(self, momentum: float = 0.0) -> None:
        super().__init__()
        self.momentum = momentum
        self.mode = 'quant'
        self.register_buffer('min_val', torch.tensor(float('inf')))
        self.register_buffer('max_val', torch.tensor(float('-inf')))
        self.register_buffer('scale', torch.tensor(1.0))
        self.register_buffer('zero_point', torch.tensor(0, dtype=torch.int32))
        self.register_buffer('calibrated', torch.tensor(0, dtype=torch.uint8))

    @property
    def qparams(self) -> tuple[Tensor, Tensor]:
        return self.scale, self.zero_point

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        self.min_val.copy_(torch.minimum(self.min_val, x.min().float()))
        self.max_val.copy_(torch.maximum(self.max_val, x.max().float()))

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """Scale and zero point from the observed range (a range never observed stays float)."""
        if not bool(torch.isfinite(self.min_val)):
            return
        scale, zp = uint8_qparams(self.min_val, self.max_val)
        self.scale.copy_(scale)
        self.zero_point.copy_(zp)
        self.calibrated.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == 'observe':
            self.observe(x)
            return x
        if self.mode == 'float' or not bool(self.calibrated):
            return x
        if self.training and self.momentum > 0 and not _exporting():
            with torch.no_grad():
                m = self.momentum
                self.min_val.mul_(1 - m).add_(m * x.min().float().clamp(max=0))
                self.max_val.mul_(1 - m).add_(m * x.max().float().clamp(min=0))
                scale, zp = uint8_qparams(self.min_val, self.max_val)
                self.scale.copy_(scale)
                self.zero_point.copy_(zp)
        return _fake_quant(x, self.qparams)

    def extra_repr(self) -> str:
        return f'uint8, momentum={self.momentum}'


# ---- weights ----------------------------------------------------------------------------------
def fold_bn(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm | None) -> tuple[Tensor, Tensor | None]:
    """The convolution's weight and bias with ``bn`` (eval statistics) folded in; differentiable in the
    conv weight and the BN's affine parameters."""
    w, b = conv.weight, conv.bias
    if bn is None:
        return w, b
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    gamma = bn.weight * inv_std if bn.affine else inv_std
    beta = bn.bias - bn.running_mean * gamma if bn.affine else -bn.running_mean * gamma
    w = w * gamma.reshape(-1, *([1] * (w.dim() - 1)))
    b = beta if b is None else beta + b * gamma
    return w, b


def weight_scale(w: Tensor) -> Tensor:
    """Per-output-channel symmetric int8 scale ``max|w_c| / 127`` (detached)."""
    return (w.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp(min=_TINY) / W_QMAX).float()


def quantize_weight(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-output-channel symmetric int8 fake quantization of ``w``; returns it and its scales."""
    scale = weight_scale(w)
    zp = torch.zeros_like(scale, dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, W_QMIN, W_QMAX), scale


def _round_ste(x: Tensor) -> Tensor:
    return x + (torch.round(x) - x).detach()


def _cached_weight(conv: nn.Conv2d, bn: nn.Module | None) -> tuple[Tensor, ...]:
    tensors = [conv.weight, conv.bias]
    if bn is not None:
        tensors += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    version = tuple((id(t), t._version) if t is not None else None for t in tensors)
    cache = conv.__dict__.setdefault('_fcos_qweights', {})
    hit = cache.get(id(bn))
    if hit is None or hit[0] != version:
        w, b = fold_bn(conv, bn)
        hit = (version, (w, b, *quantize_weight(w)))
        cache[id(bn)] = hit
    return hit[1]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one side, ``(before, after)`` (mmcv's ``Conv2dAdaptivePadding``)."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return pad // 2, pad - pad // 2


class _SameConv2d(torch.autograd.Function):
    """Export form of a "SAME"-padded convolution: one ONNX ``Conv`` with ``auto_pad='SAME_UPPER'``
    (as the plugin's mmdeploy rewrite of ``Conv2dAdaptivePadding`` exports the float model), so the
    padding is right at every input size and no ``Pad`` sits between the dequantized input and the
    convolution that ONNX Runtime fuses into ``QLinearConv``."""

    @staticmethod
    def forward(ctx, x, weight, bias, kernel, stride, dilation, groups):
        return _same_conv(x, weight, bias, stride, dilation, groups)

    @staticmethod
    def symbolic(g, x, weight, bias, kernel, stride, dilation, groups):
        inputs = [x, weight] if bias is None or bias.node().mustBeNone() else [x, weight, bias]
        return g.op('Conv', *inputs, auto_pad_s='SAME_UPPER', kernel_shape_i=list(kernel),
                    strides_i=list(stride), dilations_i=list(dilation), group_i=groups)


def _same_conv(x, weight, bias, stride, dilation, groups):
    kh, kw = (int(k) for k in weight.shape[-2:])
    top, bottom = same_padding(int(x.shape[-2]), kh, stride[0], dilation[0])
    left, right = same_padding(int(x.shape[-1]), kw, stride[1], dilation[1])
    if top or bottom or left or right:
        x = torch.nn.functional.pad(x, [left, right, top, bottom])  # zeros: exact in uint8
    return torch.nn.functional.conv2d(x, weight, bias, stride, 0, dilation, groups)


def quant_conv2d(x: Tensor, conv: nn.Conv2d, bn: nn.Module | None = None,
                 same_pad: bool = False) -> Tensor:
    """``conv`` (+ folded ``bn``) on ``x`` with int8 per-channel weights and, when ``x`` is
    fake-quantized, an int32 bias of scale ``input_scale * weight_scale``. ``conv.padding``, or
    TensorFlow "SAME" padding computed from ``x``'s size with ``same_pad``."""
    if torch.is_grad_enabled() or _exporting():
        w, b = fold_bn(conv, bn)
        w_q, w_scale = quantize_weight(w)
    else:  # inference: the folded, quantized weight only changes when a parameter or statistic does
        w, b, w_q, w_scale = _cached_weight(conv, bn)
    in_q = qparams_of(x)
    if b is not None and in_q is not None:
        b_scale = in_q[0] * w_scale
        b_int = torch.clamp(_round_ste(b / b_scale), -INT32_MAX, INT32_MAX)
        b = b_int * b_scale
    if _exporting():
        if in_q is None:
            raise RuntimeError('quant_conv2d: exporting a convolution whose input is not quantized '
                               '(the model was not calibrated)')
        w_int = torch.round(w.detach() / w_scale.view(-1, *([1] * (w.dim() - 1)))).clamp(W_QMIN, W_QMAX)
        w_q = const_dequant(w_int.to(torch.int8), w_scale,
                            torch.zeros_like(w_scale, dtype=torch.int8), axis=0)
        if b is not None:
            b = const_dequant(b_int.detach().to(torch.int32), b_scale,
                              torch.zeros_like(b_scale, dtype=torch.int32), axis=0)
    if same_pad:
        stride, dilation = tuple(int(v) for v in conv.stride), tuple(int(v) for v in conv.dilation)
        if _exporting():
            kernel = tuple(int(k) for k in conv.weight.shape[-2:])
            return _SameConv2d.apply(x, w_q, b, kernel, stride, dilation, int(conv.groups))
        return _same_conv(x, w_q, b, stride, dilation, conv.groups)
    return torch.nn.functional.conv2d(x, w_q, b, conv.stride, conv.padding, conv.dilation, conv.groups)
