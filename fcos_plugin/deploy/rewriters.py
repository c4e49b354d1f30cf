"""mmdeploy rewriters for fcos_plugin's models (importing this module registers them; needs mmdeploy).

Three rewrites, each active only inside mmdeploy's export (``RewriterContext``), nowhere else:

* :func:`torch_onnx_export` -- the TorchScript exporter: torch >= 2.9 exports with the dynamo exporter
  by default, and mmdeploy 1.3.1's rewriters need the TorchScript one;
* :func:`conv2d_adaptive_padding__forward` -- TensorFlow "SAME" padding left to the runtime
  (``auto_pad``), so that a dynamic-shape export is right at every input size (below);
* :func:`tuned_fcos_head__predict_by_feat` -- the tuned head's own post-processing (further below).

**"SAME" padding.** The stride-2 convolutions of :class:`~fcos_plugin.models.backbones.EffNet`
(``padding='same_tf'``, what the TF-trained Lite/B weights expect) are mmcv's ``Conv2dAdaptivePadding``,
which computes its asymmetric padding with Python ``math.ceil``/``max`` on ``x.size()``. The TorchScript
exporter records that arithmetic as constants, so a "dynamic" graph pads (or crops) every input to the
export size before the stem: exported at 320, a 512x512 input ran the network on a 321x321 crop and
lost every object outside it. mmdeploy 1.3.1 rewrites this forward for TensorRT with static shapes only.
The rewrite below exports each of them as one ONNX ``Conv`` with ``auto_pad='SAME_UPPER'`` -- ONNX's own
name for exactly this padding, computed by the runtime from the actual input -- for every backend
without its own rewrite (mmdeploy's TensorRT rewrite stays in force there). Computing the amounts in the
graph instead (``Shape -> arithmetic -> Pad -> Conv``) is right at every size too, but ONNX Runtime's
profiler shows the ``Pad`` copies and the layout reorders around them among the float model's largest
costs after the convolutions, and the int8 model gets a dequantize/quantize pair around every such ``Pad``.

:class:`~fcos_plugin.models.dense_heads.TunedFCOSHead` inherits ``predict_by_feat`` from mmdet's
``BaseDenseHead``, for which mmdeploy 1.3.1 registers a rewrite that differs from the PyTorch head in
three ways that change the detections:

* it thresholds and ranks ``cls * centerness`` -- the tuned head scores ``sqrt(cls * centerness)``
  (:meth:`TunedFCOSHead.score_from_logits`) and mmdet's own FCOS thresholds ``cls`` alone -- so a
  weak model gives 100 boxes in PyTorch and none in ONNX Runtime;
* it takes ``pre_top_k`` / ``max_output_boxes_per_class`` from the deploy config's
  ``post_processing``, which can truncate what PyTorch keeps;
* it neither drops boxes of ``min_bbox_size`` nor clips boxes to the test pipeline's image size when
  the data preprocessor pads the input further (``pad_size_divisor``).

The rewrite below computes exactly what ``TunedFCOSHead._predict_by_feat_single`` does, batched and
with mmdeploy's own pieces: per level the ``nms_pre`` points with the highest best-class score
(``gather_topk``), (point, class) pairs with score > ``score_thr``, class-aware NMS and the
``max_per_img`` best (``multiclass_nms``, i.e. ONNX ``NonMaxSuppression``). The thresholds come from
the model's ``test_cfg``; the deploy config's ``post_processing`` cannot truncate the result.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmdeploy.codebase.mmdet.deploy import gather_topk, pad_with_value_if_necessary
from mmdeploy.core import FUNCTION_REWRITER
from mmdeploy.mmcv.ops import multiclass_nms
from mmdeploy.utils import is_dynamic_shape
from mmengine.config import ConfigDict
from torch import Tensor

__all__ = ['EXPORT_CFG_KEY', 'check_exportable_test_cfg', 'conv2d_adaptive_padding__forward',
           'same_padding', 'tuned_fcos_head__predict_by_feat']

#: Deploy-config section written by :func:`fcos_plugin.deploy.export_onnx` for these rewriters:
#: ``pipeline_img_shape`` (h, w), the ``img_shape`` the model config's test pipeline gives every image
#: (it ends with ``Pad(size=...)``), and ``pipeline_input_shape`` (h, w), the input size it yields
#: after the data preprocessor's ``pad_size_divisor``. PyTorch clips boxes to the former; so does the
#: graph when its input has exactly the latter size, and otherwise (another pipeline, or absent
#: section) it clips to the input size, as mmdeploy does.
EXPORT_CFG_KEY = 'fcos_plugin'


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one spatial side, ``(before, after)``: the output has
    ``ceil(size / stride)`` elements; the extra element goes after (mmcv's ``Conv2dAdaptivePadding``)."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return pad // 2, pad - pad // 2


class _SameConv2d(torch.autograd.Function):
    """A 2-D convolution with TF "SAME" padding, exported as one ONNX ``Conv`` with
    ``auto_pad='SAME_UPPER'``: ONNX's own definition of that padding (output ``ceil(size / stride)``, the
    odd element of padding after), computed by the runtime for every input size. One node rather than
    ``Pad -> Conv``: ONNX Runtime fuses it (bias, activation, int8 ``QLinearConv``) like any convolution,
    where a separate ``Pad`` with computed amounts costs a copy of the tensor, layout reorders around it,
    and in an int8 graph a dequantize/quantize pair."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, stride: tuple, dilation: tuple,
                groups: int) -> Tensor:
        kh, kw = weight.shape[-2:]
        top, bottom = same_padding(int(x.shape[-2]), int(kh), stride[0], dilation[0])
        left, right = same_padding(int(x.shape[-1]), int(kw), stride[1], dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def symbolic(g, x, weight, bias, stride, dilation, groups):
        kernel = weight.type().sizes()[-2:]
        return g.op('Conv', x, weight, bias, auto_pad_s='SAME_UPPER', kernel_shape_i=list(kernel),
                    strides_i=list(stride), dilations_i=list(dilation), group_i=groups)


@FUNCTION_REWRITER.register_rewriter(func_name='torch.onnx.export')
def torch_onnx_export(*args, **kwargs):
    """``torch.onnx.export`` inside mmdeploy's export: the TorchScript exporter unless asked otherwise."""
    kwargs.setdefault('dynamo', False)
    return FUNCTION_REWRITER.get_context().origin_func(*args, **kwargs)


@FUNCTION_REWRITER.register_rewriter(
    func_name='mmcv.cnn.bricks.conv2d_adaptive_padding.Conv2dAdaptivePadding.forward')
def conv2d_adaptive_padding__forward(self, x: Tensor) -> Tensor:
    """``Conv2dAdaptivePadding.forward`` as one ``Conv`` with ``auto_pad='SAME_UPPER'`` (see the module
    docstring); numerically the original forward."""
    bias = self.bias if self.bias is not None else self.weight.new_zeros(self.out_channels)
    return _SameConv2d.apply(x, self.weight, bias, tuple(int(v) for v in self.stride),
                             tuple(int(v) for v in self.dilation), int(self.groups))


def check_exportable_test_cfg(cfg: dict | ConfigDict) -> None:
    """Refuse test configs the exported graph cannot reproduce exactly.

    Raises:
        ValueError: NMS other than plain ``nms``, or no positive ``max_per_img``.
    """
    nms = cfg.get('nms')
    if nms is None or nms.get('type', 'nms') != 'nms':
        raise ValueError(f'test_cfg.nms={nms!r}: the ONNX export supports dict(type="nms", '
                         'iou_threshold=...) only (ONNX NonMaxSuppression)')
    if not cfg.get('max_per_img', 0) > 0:
        raise ValueError(f'test_cfg.max_per_img={cfg.get("max_per_img")!r}: the ONNX export needs '
                         'a positive number of boxes per image')


def _clip_shape(img_shape: Tensor | Sequence[int],
                export_cfg: dict) -> Tensor | Sequence[int]:
    """The (h, w) boxes are clipped to: ``pipeline_img_shape`` for an input of exactly
    ``pipeline_input_shape``, else the input size. A tensor (dynamic shapes) stays a tensor, so
    the choice is made in the graph."""
    img_size, input_size = (export_cfg.get('pipeline_img_shape'),
                            export_cfg.get('pipeline_input_shape'))
    if img_size is None or input_size is None:
        return img_shape
    if isinstance(img_shape, Tensor):
        from_pipeline = (img_shape == img_shape.new_tensor(list(input_size))).all()
        return torch.where(from_pipeline, img_shape.new_tensor(list(img_size)), img_shape)
    if [int(v) for v in img_shape] == [int(v) for v in input_size]:
        return [int(v) for v in img_size]
    return img_shape


@FUNCTION_REWRITER.register_rewriter(
    func_name='fcos_plugin.models.dense_heads.tuned_fcos_head.TunedFCOSHead.predict_by_feat')
def tuned_fcos_head__predict_by_feat(self,
                                     cls_scores: list[Tensor],
                                     bbox_preds: list[Tensor],
                                     score_factors: list[Tensor],
                                     batch_img_metas: list[dict] | None = None,
                                     cfg: ConfigDict | None = None,
                                     rescale: bool = False,
                                     with_nms: bool = True,
                                     **kwargs) -> tuple[Tensor, ...]:
    """Batched ``TunedFCOSHead`` post-processing for export (ONNX Runtime and default backends).

    Args:
        cls_scores (list[Tensor]): Per level (N, C, H_l, W_l) class logits.
        bbox_preds (list[Tensor]): Per level (N, 4, H_l, W_l) distances in pixels (the head
            multiplies by the stride at inference).
        score_factors (list[Tensor]): Per level (N, 1, H_l, W_l) centerness logits.
        batch_img_metas (list[dict]): ``img_shape`` of the input (set by mmdeploy's detector
            rewrite: a tensor for dynamic shapes).
        cfg (ConfigDict, optional): Test config; the head's ``test_cfg`` when None.
        rescale (bool): Unused: the exported graph works in input pixels; the caller divides by
            ``scale_factor``.
        with_nms (bool): With False, return the candidates before NMS.

    Returns:
        tuple[Tensor, Tensor]: with NMS, ``dets`` (N, K, 5) ``x1y1x2y2`` + score and ``labels``
        (N, K), K <= ``max_per_img``, sorted by score; rows with score 0 are padding. Without
        NMS, ``bboxes`` (N, P, 4) and ``scores`` (N, P, C) (0 where a box is below
        ``min_bbox_size``).
    """
    ctx = FUNCTION_REWRITER.get_context()
    deploy_cfg = ctx.cfg
    cfg = self.test_cfg if cfg is None else cfg
    check_exportable_test_cfg(cfg)
    is_dynamic = is_dynamic_shape(deploy_cfg)
    batch_size = cls_scores[0].shape[0]
    nms_pre = cfg.get('nms_pre', -1)

    featmap_sizes = [featmap.size()[-2:] for featmap in cls_scores]
    mlvl_priors = self.prior_generator.grid_priors(
        featmap_sizes, dtype=bbox_preds[0].dtype, device=bbox_preds[0].device)
    mlvl_bboxes, mlvl_scores, mlvl_points = [], [], []
    for cls_score, bbox_pred, centerness, priors in zip(cls_scores, bbox_preds, score_factors,
                                                         mlvl_priors):
        scores = self.score_from_logits(
            cls_score.permute(0, 2, 3, 1).reshape(batch_size, -1, self.cls_out_channels),
            centerness.permute(0, 2, 3, 1).reshape(batch_size, -1))  # (N, P_l, C)
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(batch_size, -1, 4)
        priors = priors.unsqueeze(0)  # (1, P_l, 2)
        if not is_dynamic:
            priors = priors.data  # constants in a static graph
        if nms_pre > 0:
            # mmdeploy's topk rewrite caps k at P_l, as ``0 < nms_pre < P_l`` does in PyTorch
            priors = pad_with_value_if_necessary(priors, 1, nms_pre)
            bbox_pred = pad_with_value_if_necessary(bbox_pred, 1, nms_pre)
            scores = pad_with_value_if_necessary(scores, 1, nms_pre, 0.)
            _, topk_inds = scores.max(-1)[0].topk(nms_pre)
            bbox_pred, scores = gather_topk(bbox_pred, scores, inds=topk_inds,
                                            batch_size=batch_size, is_batched=True)
            priors = gather_topk(priors, inds=topk_inds, batch_size=batch_size, is_batched=False)
        mlvl_bboxes.append(bbox_pred)
        mlvl_scores.append(scores)
        mlvl_points.append(priors)

    img_shape = batch_img_metas[0]['img_shape']
    max_shape = _clip_shape(img_shape, deploy_cfg.get(EXPORT_CFG_KEY, {}))
    bboxes = self.bbox_coder.decode(torch.cat(mlvl_points, dim=1), torch.cat(mlvl_bboxes, dim=1),
                                    max_shape=max_shape)  # (N, P, 4)
    scores = torch.cat(mlvl_scores, dim=1)  # (N, P, C)

    min_bbox_size = cfg.get('min_bbox_size', -1)
    if min_bbox_size >= 0:
        # PyTorch drops these boxes before NMS; a zero score is never above score_thr (>= 0).
        # (PyTorch measures them after rescaling to the original image: exact for size 0.)
        valid = ((bboxes[..., 2] - bboxes[..., 0] > min_bbox_size)
                 & (bboxes[..., 3] - bboxes[..., 1] > min_bbox_size))
        scores = torch.where(valid.unsqueeze(-1), scores, scores.new_zeros(1))
    if not with_nms:
        return bboxes, scores

    max_per_img = int(cfg.max_per_img)
    # Per-class NMS survivors come in score order, so keeping max_per_img of each class can not
    # change the overall max_per_img best: the deploy config's limits are deliberately not used.
    return multiclass_nms(
        bboxes,
        scores,
        max_output_boxes_per_class=max_per_img,
        nms_type='nms',
        iou_threshold=float(cfg.nms.get('iou_threshold', 0.5)),
        score_threshold=float(cfg.get('score_thr', 0.0)),
        pre_top_k=-1,
        keep_top_k=max_per_img)
