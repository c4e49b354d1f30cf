"""BiFPN neck (Tan et al., "EfficientDet: Scalable and Efficient Object Detection", CVPR 2020).

Configured like Horizon HAT's ``fcos_efficientnetb0`` recipe: backbone features of strides 8/16/32
(40/112/320 channels for EfficientNet-B0/Lite0) are projected to 64 channels, two extra levels
(strides 64/128) are made by max pooling, and three BiFPN cells with fast normalized fusion follow.

Shape convention: every stride-2 step maps a side ``n`` to ``ceil(n / 2)`` -- what EfficientNet's
stride-2 convolutions (kernel 3 or 5, "same" padding) and a ``3x3/s2`` max pool with padding 1
produce -- so inputs of any size (512x512, 640x480, 513x385, ...) give level ``i`` the side
``ceil(side / stride_i)``. Upsampling goes to the exact size of the target level instead of a fixed
factor 2, which is what keeps non-divisible sizes working.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor, nn

# EfficientDet's epsilon in the fast-normalized-fusion denominator (keeps it finite when every
# weight has been clipped to zero by the ReLU).
FUSION_EPS = 1e-4
# Pre-conv activation, then conv, then norm: the EfficientDet node is
# ``BN(conv(act(weighted_sum)))``, with no activation after the BN.
ACT_CONV_NORM = ('act', 'conv', 'norm')


def _max_pool_s2(x: Tensor) -> Tensor:
    """``3x3/s2`` max pool with padding 1: ``(N, C, H, W) -> (N, C, ceil(H/2), ceil(W/2))``."""
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class FastNormalizedFusion(nn.Module):
    """Fast normalized fusion: ``sum_i w_i * x_i`` with ``w = relu(v) / (sum(relu(v)) + eps)``.

    Args:
        num_inputs (int): Number of feature maps fused.
        eps (float): Denominator epsilon. Defaults to 1e-4 (EfficientDet).
    """

    def __init__(self, num_inputs: int, eps: float = FUSION_EPS) -> None:
        super().__init__()
        self.num_inputs = num_inputs
        self.eps = eps
        # All-ones start = plain averaging, as in EfficientDet.
        self.weight = nn.Parameter(torch.ones(num_inputs, dtype=torch.float32))

    def normalized_weights(self) -> Tensor:
        """Weights ``(num_inputs,)``, non-negative, summing to ``S / (S + eps)`` (~1)."""
        w = F.relu(self.weight)
        return w / (w.sum() + self.eps)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fuse ``num_inputs`` maps of one shape ``(N, C, H, W)`` into one ``(N, C, H, W)``."""
        assert len(inputs) == self.num_inputs, (
            f'expected {self.num_inputs} inputs, got {len(inputs)}')
        w = self.normalized_weights()
        out = w[0] * inputs[0]
        for i in range(1, self.num_inputs):
            out = out + w[i] * inputs[i]
        return out

    def extra_repr(self) -> str:
        return f'num_inputs={self.num_inputs}, eps={self.eps}'


class BiFPNNode(BaseModule):
    """One BiFPN node: fast normalized fusion, then activation -> 3x3 conv -> norm.

    Args:
        num_inputs (int): Number of fused feature maps (2 or 3).
        channels (int): Channels of every input and of the output.
        use_separable (bool): Depthwise 3x3 + pointwise 1x1 (EfficientDet) instead of a plain
            3x3 convolution.
        norm_cfg (dict): Norm after the convolution.
        act_cfg (dict, optional): Activation applied to the fused sum before the convolution.
        init_cfg (dict or list[dict], optional): Initialization config.
    """

    def __init__(self,
                 num_inputs: int,
                 channels: int,
                 use_separable: bool = True,
                 norm_cfg: ConfigType = dict(type='BN', requires_grad=True),
                 act_cfg: OptConfigType = dict(type='ReLU'),
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.fusion = FastNormalizedFusion(num_inputs)
        if use_separable:
            # No bias anywhere: the depthwise bias would be absorbed by the pointwise conv, and
            # the pointwise bias by the norm.
            self.conv = DepthwiseSeparableConvModule(
                channels, channels, 3, padding=1, bias=False, order=ACT_CONV_NORM,
                dw_norm_cfg=None, dw_act_cfg=act_cfg, pw_norm_cfg=norm_cfg, pw_act_cfg=None)
        else:
            self.conv = ConvModule(
                channels, channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg,
                order=ACT_CONV_NORM)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        """Fuse maps of shape ``(N, C, H, W)`` into one ``(N, C, H, W)``."""
        return self.conv(self.fusion(inputs))


class BiFPNCell(BaseModule):
    """One bidirectional cell over ``num_levels`` maps of ``channels`` channels.

    Top-down: ``td[L-1] = x[L-1]``, ``td[i] = node(x[i], up(td[i+1]))``.
    Bottom-up: ``out[0] = td[0]``, ``out[i] = node(x[i], td[i], down(out[i-1]))`` and, at the top,
    ``out[L-1] = node(x[L-1], down(out[L-2]))``.

    Args:
        num_levels (int): Number of pyramid levels ``L`` (>= 2).
        channels (int): Channels of every level.
        use_separable, norm_cfg, act_cfg: See :class:`BiFPNNode`.
        init_cfg (dict or list[dict], optional): Initialization config.
    """

    def __init__(self,
                 num_levels: int,
                 channels: int,
                 use_separable: bool = True,
                 norm_cfg: ConfigType = dict(type='BN', requires_grad=True),
                 act_cfg: OptConfigType = dict(type='ReLU'),
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        assert num_levels >= 2, 'a BiFPN cell needs at least two levels'
        self.num_levels = num_levels
        node = dict(channels=channels, use_separable=use_separable, norm_cfg=norm_cfg,
                    act_cfg=act_cfg)
        # top_down[i] makes level i (0 .. L-2); bottom_up[i - 1] makes level i (1 .. L-1).
        self.top_down = nn.ModuleList(
            [BiFPNNode(2, **node) for _ in range(num_levels - 1)])
        self.bottom_up = nn.ModuleList(
            [BiFPNNode(3 if i < num_levels - 1 else 2, **node) for i in range(1, num_levels)])

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Map ``L`` maps ``(N, C, H_i, W_i)`` (finest first) to ``L`` maps of the same shapes."""
        x = list(inputs)
        top = self.num_levels - 1
        td: list[Tensor] = [x[top]] * self.num_levels
        for i in range(top - 1, -1, -1):
            up = F.interpolate(td[i + 1], size=x[i].shape[-2:], mode='nearest')
            td[i] = self.top_down[i]([x[i], up])
        outs = [td[0]]
        for i in range(1, self.num_levels):
            down = _max_pool_s2(outs[-1])
            fused = [x[i], td[i], down] if i < top else [x[i], down]
            outs.append(self.bottom_up[i - 1](fused))
        return tuple(outs)


@MODELS.register_module()
class BiFPNNeck(BaseModule):
    """EfficientDet BiFPN neck, registered as ``BiFPNNeck`` (mmdet's ``projects/`` has a ``BiFPN``).

    Laterals project every input with a 1x1 conv + norm to ``out_channels``; the first extra level
    is ``maxpool(proj(C_last))`` (the 1x1 conv + norm only when ``in_channels[-1] !=
    out_channels``), each further one ``maxpool`` of the previous; ``num_repeats`` cells follow.
    One lateral per level feeds both paths of the first cell (the official EfficientDet gives the
    first cell's bottom-up P4/P5 inputs a second pair of 1x1 projections; sharing saves ~28k
    parameters at 64 channels and keeps every cell identical).

    Args:
        in_channels (list[int]): Channels of the backbone maps, finest first (e.g. ``[40, 112,
            320]`` for EfficientNet-B0 strides 8/16/32).
        out_channels (int): Channels of every output level. Defaults to 64.
        num_outs (int): Output levels; ``num_outs - len(in_channels)`` extra levels are made by
            stride-2 max pooling. Defaults to 5 (P3-P7).
        num_repeats (int): Number of stacked BiFPN cells. Defaults to 3.
        use_separable (bool): Separable (depthwise 3x3 + pointwise 1x1) node convolutions,
            EfficientDet's choice; ``False`` gives plain 3x3 convolutions. Defaults to True.
        norm_cfg (dict): Norm config of laterals and nodes. Defaults to BN.
        act_cfg (dict, optional): Activation before each node convolution. Defaults to ReLU
            (quantization friendly, as in HAT); ``dict(type='Swish')`` is EfficientDet's.
        init_cfg (dict or list[dict], optional): Initialization config. Defaults to None, which
            keeps mmcv ``ConvModule``'s Kaiming init and all-ones fusion weights.
    """

    def __init__(self,
                 in_channels: list[int],
                 out_channels: int = 64,
                 num_outs: int = 5,
                 num_repeats: int = 3,
                 use_separable: bool = True,
                 norm_cfg: ConfigType = dict(type='BN', requires_grad=True),
                 act_cfg: OptConfigType = dict(type='ReLU'),
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        assert isinstance(in_channels, (list, tuple)) and len(in_channels) >= 1
        assert num_outs >= max(len(in_channels), 2), (
            f'num_outs={num_outs} must be >= len(in_channels)={len(in_channels)} and >= 2')
        assert num_repeats >= 1
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.num_repeats = num_repeats

        self.laterals = nn.ModuleList([
            ConvModule(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)
            for c in in_channels
        ])
        if num_outs > self.num_ins and in_channels[-1] != out_channels:
            self.extra_proj = ConvModule(
                in_channels[-1], out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)
        else:
            self.extra_proj = None
        self.cells = nn.Sequential(*[
            BiFPNCell(num_outs, out_channels, use_separable=use_separable, norm_cfg=norm_cfg,
                      act_cfg=act_cfg) for _ in range(num_repeats)
        ])

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Fuse backbone maps into ``num_outs`` maps of ``out_channels`` channels.

        Args:
            inputs (Sequence[Tensor]): ``len(in_channels)`` maps ``(N, in_channels[i], H_i, W_i)``,
                finest first, each side ``ceil`` of half the previous one.

        Returns:
            tuple[Tensor]: ``num_outs`` maps ``(N, out_channels, H_i, W_i)``; the extra levels have
            ``H_{i+1} = ceil(H_i / 2)``.
        """
        if len(inputs) != self.num_ins:
            raise ValueError(f'BiFPNNeck expects {self.num_ins} input maps (in_channels='
                             f'{self.in_channels}), got {len(inputs)}')
        for i in range(1, self.num_ins):
            expect = [(s + 1) // 2 for s in inputs[i - 1].shape[-2:]]
            if list(inputs[i].shape[-2:]) != expect:
                raise ValueError(
                    f'BiFPNNeck input {i} has size {tuple(inputs[i].shape[-2:])}, expected '
                    f'{tuple(expect)} = ceil(input {i - 1} size / 2); the max-pool path needs '
                    'each level to be the ceil-halved previous one (pad the image or the '
                    'backbone accordingly)')
        feats = [lateral(x) for lateral, x in zip(self.laterals, inputs)]
        if self.num_outs > self.num_ins:
            top = inputs[-1] if self.extra_proj is None else self.extra_proj(inputs[-1])
            for _ in range(self.num_outs - self.num_ins):
                top = _max_pool_s2(top)
                feats.append(top)
        return tuple(self.cells(feats))
