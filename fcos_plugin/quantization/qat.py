"""Quantization-aware training of the FCOS-EfficientNet detector: :class:`QATFCOS`.

``QATFCOS`` is mmdet's ``FCOS`` whose parts, once built, are switched in place to subclasses that run
the same layers through :mod:`.fake_quant` (``module.__class__ = QAT...``): every parameter and buffer
keeps its name, so ``load_from=FLOAT_CKPT`` loads a float checkpoint, and the only new state-dict entries
are the activation quantizers' buffers (``*_quant.*``). Where ONNX Runtime will run int8:

* the network input;
* every conv + BN (+ ReLU/ReLU6) unit: BN folded into the weight (statistics frozen: BN never runs
  forward), int8 per-channel weights, the output quantized *after* its activation (ONNX Runtime removes
  the ReLU/Clip into the quantization); in mmcv ``ConvModule`` (backbone stem, MBConv blocks, BiFPN
  laterals and nodes) and the head's towers (shared conv weights, a BN per level: one folded conv and
  one output quantizer per level);
* the MBConv residual additions, the BiFPN fast-normalized fusion (each product ``w_i * x_i`` and each
  partial sum; the last sum quantized after the node's ReLU), the fusion weights as uint8 constants;
* max pooling, nearest resize and "SAME" zero padding, re-quantized with their input's parameters.

The head's output convolutions (class, box, centerness: nothing int8 follows them) and the
post-processing stay float, as the post-training quantization does (and HAT).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmcv.cnn.bricks.conv2d_adaptive_padding import Conv2dAdaptivePadding
from mmdet.models.detectors import FCOS
from mmdet.models.layers import InvertedResidual
from mmdet.registry import MODELS
from torch import Tensor, nn

from ..models.backbones.efficientnet import EffNet
from ..models.dense_heads.tuned_fcos_head import TunedFCOSHead
from ..models.necks.bifpn import BiFPNCell, BiFPNNeck, BiFPNNode, FastNormalizedFusion, _max_pool_s2
from .fake_quant import (
    A_QMAX,
    ActQuant,
    _exporting,
    const_dequant,
    quant_conv2d,
    requant_like,
)

__all__ = ['QATFCOS', 'act_quantizers', 'calibrated', 'convert_to_qat', 'finish_calibration', 'set_mode']


def _qconv(x: Tensor, conv: nn.Conv2d, bn: nn.Module | None) -> Tensor:
    return quant_conv2d(x, conv, bn, same_pad=isinstance(conv, Conv2dAdaptivePadding))


class QATConvModule(ConvModule):
    """mmcv ``ConvModule`` (orders ``conv, norm, act`` and ``act, conv, norm``) with BN folded into
    int8 per-channel weights; ``out_quant`` after the activation; with the activation first,
    ``in_quant`` after it (it follows an unquantized sum: BiFPN nodes)."""

    def _qat_init(self, momentum: float) -> None:
        if self.order not in (('conv', 'norm', 'act'), ('act', 'conv', 'norm')):
            raise NotImplementedError(f'QAT: ConvModule order {self.order}')
        if self.with_explicit_padding:
            raise NotImplementedError('QAT: ConvModule with an explicit padding layer')
        if self.order[0] == 'act' and self.with_activation:
            self.in_quant = ActQuant(momentum)
        self.out_quant = ActQuant(momentum)

    def forward(self, x: Tensor, activate: bool = True, norm: bool = True) -> Tensor:
        act_first = self.order[0] == 'act'
        if act_first and activate and self.with_activation:
            x = self.in_quant(self.activate(x))
        x = _qconv(x, self.conv, self.norm if (norm and self.with_norm) else None)
        if not act_first and activate and self.with_activation:
            x = self.activate(x)
        return self.out_quant(x)


class QATInvertedResidual(InvertedResidual):
    """mmdet ``InvertedResidual`` (no squeeze-excitation) with its residual sum quantized."""

    def _qat_init(self, momentum: float) -> None:
        if self.with_se:
            raise NotImplementedError('QAT: squeeze-excitation blocks (use EfficientNet-Lite)')
        if self.with_res_shortcut:
            self.add_quant = ActQuant(momentum)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.with_expand_conv:
            out = self.expand_conv(out)
        out = self.linear_conv(self.depthwise_conv(out))
        if self.with_res_shortcut:
            return self.add_quant(x + self.drop_path(out))
        return out


class QATFastNormalizedFusion(FastNormalizedFusion):
    """``sum_i w_i * x_i`` with every product and partial sum quantized; the last sum is left to the
    caller (quantized after the node's ReLU). The weights are uint8 constants at export (``w_i`` =
    255 x ``w_i / 255``, exact)."""

    def _qat_init(self, momentum: float) -> None:
        self.mul_quants = nn.ModuleList(ActQuant(momentum) for _ in range(self.num_inputs))
        self.add_quants = nn.ModuleList(ActQuant(momentum) for _ in range(self.num_inputs - 2))

    def _weight(self, w: Tensor, x: Tensor) -> Tensor:
        if not _exporting():
            return w
        value = float(w.detach().clamp(min=0))
        scale = torch.tensor(max(value, 1e-8) / A_QMAX)
        q = torch.tensor(round(value / float(scale)), dtype=torch.uint8)
        return const_dequant(q, scale, torch.tensor(0, dtype=torch.uint8))

    def forward(self, inputs, quantize_last: bool = False) -> Tensor:
        w = self.normalized_weights()
        out = None
        for i, x in enumerate(inputs):
            prod = self.mul_quants[i](self._weight(w[i], x) * x)
            if out is None:
                out = prod
            else:
                out = out + prod
                if i < self.num_inputs - 1:
                    out = self.add_quants[i - 1](out)
        return out


class QATBiFPNNode(BiFPNNode):
    """BiFPN node: the fused sum goes to the convolution's leading ReLU, quantized after it."""

    def _qat_init(self, momentum: float) -> None:
        first = getattr(self.conv, 'depthwise_conv', self.conv)
        if not (first.order[0] == 'act' and first.with_activation):
            self.sum_quant = ActQuant(momentum)  # no ReLU in front of the conv: quantize the sum

    def forward(self, inputs) -> Tensor:
        out = self.fusion(inputs)
        if hasattr(self, 'sum_quant'):
            out = self.sum_quant(out)
        return self.conv(out)


class QATBiFPNCell(BiFPNCell):
    """BiFPN cell with the resize and max-pool outputs re-quantized with their inputs' parameters."""

    def forward(self, inputs) -> tuple[Tensor, ...]:
        x = list(inputs)
        top = self.num_levels - 1
        td: list[Tensor] = [x[top]] * self.num_levels
        for i in range(top - 1, -1, -1):
            up = requant_like(F.interpolate(td[i + 1], size=x[i].shape[-2:], mode='nearest'), td[i + 1])
            td[i] = self.top_down[i]([x[i], up])
        outs = [td[0]]
        for i in range(1, self.num_levels):
            down = requant_like(_max_pool_s2(outs[-1]), outs[-1])
            fused = [x[i], td[i], down] if i < top else [x[i], down]
            outs.append(self.bottom_up[i - 1](fused))
        return tuple(outs)


class QATBiFPNNeck(BiFPNNeck):
    """BiFPN neck with the extra levels' max pools re-quantized."""

    def forward(self, inputs) -> tuple[Tensor, ...]:
        feats = [lateral(x) for lateral, x in zip(self.laterals, inputs)]
        if self.num_outs > self.num_ins:
            top = inputs[-1] if self.extra_proj is None else self.extra_proj(inputs[-1])
            for _ in range(self.num_outs - self.num_ins):
                top = requant_like(_max_pool_s2(top), top)
                feats.append(top)
        return tuple(self.cells(feats))


class QATTunedFCOSHead(TunedFCOSHead):
    """Tuned FCOS head whose towers run int8: per level, each shared conv with that level's BN folded
    in, ReLU, then that level's quantizer (``cls_quants[level][i]``, ``reg_quants[level][i]``). The
    class, box and centerness convolutions stay float."""

    def _qat_init(self, momentum: float) -> None:
        if self.use_separable or self.cls_norms is None:
            raise NotImplementedError('QAT: the tuned head with plain convs and norms')
        levels = len(self.strides) if self.norm_per_level else 1
        for name in ('cls_quants', 'reg_quants'):
            setattr(self, name, nn.ModuleList(
                nn.ModuleList(ActQuant(momentum) for _ in range(self.stacked_convs))
                for _ in range(levels)))

    def _run_tower(self, x: Tensor, convs: nn.ModuleList, norms: nn.ModuleList | None,
                   level: int) -> Tensor:
        level = level if self.norm_per_level else 0
        quants = (self.cls_quants if convs is self.cls_convs else self.reg_quants)[level]
        for conv, norm, quant in zip(convs, norms[level], quants):
            x = quant(self.tower_act(_qconv(x, conv.conv, norm)))
        return x


#: float class -> QAT class (exact classes only: a subclass is not assumed to share the forward).
QAT_CLASSES = {
    ConvModule: QATConvModule,
    InvertedResidual: QATInvertedResidual,
    FastNormalizedFusion: QATFastNormalizedFusion,
    BiFPNNode: QATBiFPNNode,
    BiFPNCell: QATBiFPNCell,
    BiFPNNeck: QATBiFPNNeck,
    TunedFCOSHead: QATTunedFCOSHead,
}


def convert_to_qat(model: nn.Module, momentum: float = 0.0) -> nn.Module:
    """Switch ``model``'s supported parts to their QAT classes, in place (children first, so a node's
    ``_qat_init`` sees converted convs). The head's tower ``ConvModule``s keep their class: the head
    runs their convolutions itself."""
    head_towers = set()
    for m in model.modules():
        if type(m) is TunedFCOSHead:
            head_towers |= {id(c) for c in (*m.cls_convs, *m.reg_convs)}
    for m in reversed(list(model.modules())):
        cls = QAT_CLASSES.get(type(m))
        if cls is None or id(m) in head_towers:
            continue
        m.__class__ = cls
        if hasattr(m, '_qat_init'):
            m._qat_init(momentum)
    return model


def act_quantizers(model: nn.Module) -> list[ActQuant]:
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def set_mode(model: nn.Module, mode: str) -> None:
    """``'quant'``, ``'observe'`` (calibration) or ``'float'`` for every activation quantizer."""
    assert mode in ('quant', 'observe', 'float'), mode
    for q in act_quantizers(model):
        q.mode = mode


def finish_calibration(model: nn.Module) -> int:
    """Scales and zero points from the observed ranges; returns how many quantizers saw data."""
    for q in act_quantizers(model):
        q.finish_calibration()
    return sum(int(q.calibrated) for q in act_quantizers(model))


def calibrated(model: nn.Module) -> bool:
    quants = act_quantizers(model)
    return bool(quants) and all(bool(q.calibrated) for q in quants)


@MODELS.register_module()
class QATFCOS(FCOS):
    """mmdet ``FCOS`` with quantization-aware training (see the module docstring).

    Args:
        qat_cfg (dict, optional): ``range_momentum`` (float, default 0: the calibrated activation
            ranges stay fixed while fine-tuning; ``m > 0``: exponential moving average).
        **kwargs: mmdet ``FCOS``'s arguments (backbone ``EffNet`` without squeeze-excitation,
            ``BiFPNNeck``, ``TunedFCOSHead`` with plain convs).
    """

    def __init__(self, *args, qat_cfg: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.qat_cfg = {'range_momentum': 0.0, **(qat_cfg or {})}
        if not isinstance(self.backbone, EffNet):
            raise NotImplementedError('QATFCOS: the EffNet backbone only')
        self.input_quant = ActQuant(self.qat_cfg['range_momentum'])
        convert_to_qat(self, self.qat_cfg['range_momentum'])

    def extract_feat(self, batch_inputs: Tensor) -> tuple[Tensor, ...]:
        x = self.input_quant(batch_inputs)
        x = self.backbone(x)
        return self.neck(x) if self.with_neck else x

    def qat_stats(self) -> dict:
        quants = act_quantizers(self)
        return dict(quantizers=len(quants), calibrated=sum(int(q.calibrated) for q in quants))

