"""The tuned FCOS head of Horizon HAT's ``fcos_efficientnetb0_mscoco``, built from mmdet parts.

What differs from mmdet's :class:`~mmdet.models.dense_heads.FCOSHead` (which this head subclasses):

* a light head: 64-channel towers of 4 convs, optionally depthwise-separable, whose conv weights
  are shared by all levels but whose **norm layers are per level** (as EfficientDet's head and mmdet's
  ``RTMDetSepBNHead``): one BN shared by P3-P7 would learn running statistics that mix five very
  different feature distributions, so eval-mode outputs stop matching what training optimised;
* dynamic SimOTA-style assignment (:class:`MatchCostSimOTAAssigner`) instead of per-level regress
  ranges: candidates are the points inside a GT box and within ``center_radius`` strides of its
  centre, cost = focal classification cost + 2 x GIoU cost, dynamic k from the top-10 IoUs;
* GIoU box loss on positives, IoU-aware centerness (BCE against the IoU of the decoded prediction with
  its target);
* detection score ``sqrt(sigmoid(cls) * sigmoid(centerness))``, thresholded and ranked as such
  (:meth:`TunedFCOSHead.score_from_logits`, shared with the ONNX export).

``assign_mode='classic'`` keeps mmdet's FCOS targets and losses unchanged (regress ranges, center
sampling, geometric centerness); only the tower shape and the inference score differ then.
"""
from __future__ import annotations

import copy

import torch
from mmcv.cnn import ConvModule, DepthwiseSeparableConvModule, build_activation_layer, build_norm_layer
from mmdet.models.dense_heads import FCOSHead
from mmdet.models.utils import multi_apply
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import ConfigType, InstanceList, OptConfigType, OptInstanceList, reduce_mean
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor, nn

# The head's assigner (in task_modules/, as in mmdet) is importable from here too.
from ...utils.mmcv_ops import mmcv_has_cuda_ops
from ..task_modules.assigners import MatchCostSimOTAAssigner

__all__ = ['MatchCostSimOTAAssigner', 'TunedFCOSHead']

INF = 1e8
# The FCOS regress ranges for strides (8, 16, 32, 64, 128); used by assign_mode='classic' only.
FCOS_REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, INF))
ASSIGN_MODES = ('dynamic', 'classic')


@MODELS.register_module()
class TunedFCOSHead(FCOSHead):
    """FCOS head tuned as in Horizon HAT's ``fcos_efficientnetb0_mscoco``.

    Outputs per level ``l`` (stride ``s_l``, map ``H_l x W_l``), as mmdet's FCOSHead:
    ``cls_score`` (N, C, H_l, W_l) logits, ``bbox_pred`` (N, 4, H_l, W_l) left/top/right/bottom
    distances (in units of ``s_l`` while training, pixels in eval mode), ``centerness``
    (N, 1, H_l, W_l) logits, computed on the regression tower.

    Args:
        num_classes (int): Number of object classes.
        in_channels (int): Channels of every input level.
        feat_channels (int): Tower width. Defaults to 64.
        stacked_convs (int): Convs per tower. Defaults to 4.
        strides (tuple[int]): Strides of the input levels. Defaults to (8, 16, 32, 64, 128).
        assign_mode (str): ``'dynamic'`` (SimOTA-style, ``train_cfg.assigner``) or ``'classic'``
            (mmdet FCOS targets and losses). Defaults to ``'dynamic'``.
        use_separable (bool): Depthwise-separable tower convs (depthwise 3x3, pointwise 1x1, then
            norm + activation, as EfficientDet). Defaults to False.
        norm_per_level (bool): Tower norm layers per level (conv weights stay shared). With BN this
            is what keeps eval mode faithful; ``False`` shares them too, as mmdet's ``FCOSHead``
            does (fine for GN). Defaults to True.
        regress_ranges, center_sampling, center_sample_radius: FCOS targets, used by
            ``assign_mode='classic'`` only. Defaults: FCOS ranges, True, 1.5.
        norm_on_bbox (bool): Distances in units of the level's stride. Defaults to True.
        centerness_on_reg (bool): Centerness on the regression tower. Defaults to True.
        loss_cls (dict): Defaults to ``PyFocalLoss`` (sigmoid focal, alpha 0.25, gamma 2).
        loss_bbox (dict): Defaults to ``GIoULoss`` (weight 1).
        loss_centerness (dict): Defaults to sigmoid ``CrossEntropyLoss`` (weight 1).
        norm_cfg (dict): Tower norm. Defaults to BN.
        act_cfg (dict): Tower activation. Defaults to ReLU.
        train_cfg (dict, optional): ``assigner`` for ``'dynamic'`` mode (required to compute
            losses; the values live in ``configs/_base_/models/fcos_effb0_bifpn.py``).
        test_cfg (dict, optional): ``nms_pre``, ``score_thr`` (on the sqrt score), ``nms``,
            ``max_per_img``; required to predict (values in the same config).
        **kwargs: Passed to :class:`~mmdet.models.dense_heads.FCOSHead`; ``init_cfg`` defaults to
            mmdet FCOS's (the base config sets the dynamic-assignment init).

    The towers keep one conv per depth, ``cls_convs.<i>.conv.weight``, and the norms per level,
    ``cls_norms.<level>.<i>.*``, rather than mmdet ``RTMDetSepBNHead``'s per-level ``ConvModule`` lists with
    tied ``.conv``, whose state dict holds each shared weight once per level
    (``cls_convs.<level>.<i>.conv.weight``): one tensor per weight, under this head's checkpoint keys.
    """

    def __init__(self,
                 num_classes: int,
                 in_channels: int,
                 feat_channels: int = 64,
                 stacked_convs: int = 4,
                 strides: tuple[int, ...] = (8, 16, 32, 64, 128),
                 assign_mode: str = 'dynamic',
                 use_separable: bool = False,
                 norm_per_level: bool = True,
                 regress_ranges: tuple[tuple[float, float], ...] = FCOS_REGRESS_RANGES,
                 center_sampling: bool = True,
                 center_sample_radius: float = 1.5,
                 norm_on_bbox: bool = True,
                 centerness_on_reg: bool = True,
                 loss_cls: ConfigType = dict(
                     type='PyFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                     loss_weight=1.0),
                 loss_bbox: ConfigType = dict(type='GIoULoss', loss_weight=1.0),
                 loss_centerness: ConfigType = dict(
                     type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
                 norm_cfg: ConfigType = dict(type='BN', requires_grad=True),
                 act_cfg: ConfigType = dict(type='ReLU'),
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 **kwargs) -> None:
        if assign_mode not in ASSIGN_MODES:
            raise ValueError(f'TunedFCOSHead: assign_mode={assign_mode!r}; use one of {ASSIGN_MODES}')
        # Read by _init_cls_convs/_init_reg_convs, which the parent's __init__ calls.
        self.use_separable = use_separable
        self.norm_per_level = norm_per_level
        self.act_cfg = act_cfg
        self.assign_mode = assign_mode
        super().__init__(
            num_classes=num_classes,
            in_channels=in_channels,
            feat_channels=feat_channels,
            stacked_convs=stacked_convs,
            strides=strides,
            regress_ranges=regress_ranges,
            center_sampling=center_sampling,
            center_sample_radius=center_sample_radius,
            norm_on_bbox=norm_on_bbox,
            centerness_on_reg=centerness_on_reg,
            loss_cls=loss_cls,
            loss_bbox=loss_bbox,
            loss_centerness=loss_centerness,
            norm_cfg=norm_cfg,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            **kwargs)
        # As mmdet's heads: the assigner comes from train_cfg and exists only when there is one.
        self.assigner = None
        if assign_mode == 'dynamic' and self.train_cfg:
            if 'assigner' not in self.train_cfg:
                raise ValueError('TunedFCOSHead: assign_mode=\'dynamic\' needs train_cfg.assigner '
                                 '(see configs/_base_/models/fcos_effb0_bifpn.py)')
            self.assigner = TASK_UTILS.build(self.train_cfg['assigner'])

    # ------------------------------------------------------------------------------------------
    # layers
    # ------------------------------------------------------------------------------------------
    def _tower(self) -> nn.ModuleList:
        """``stacked_convs`` 3x3 convs (or depthwise-separable convs), shared by all levels.

        Without a norm they carry a bias and the activation; with one, norm and activation follow per
        level (:meth:`_level_norms`, :meth:`_run_tower`)."""
        tower = nn.ModuleList()
        no_norm = self.norm_cfg is None
        for i in range(self.stacked_convs):
            chn = self.in_channels if i == 0 else self.feat_channels
            act = self.act_cfg if no_norm else None
            if self.use_separable:
                # Linear depthwise conv (no norm/activation between depthwise and pointwise).
                tower.append(DepthwiseSeparableConvModule(
                    chn, self.feat_channels, 3, padding=1, conv_cfg=self.conv_cfg, norm_cfg=None,
                    act_cfg=act, dw_act_cfg=None, bias=no_norm))
            else:
                tower.append(ConvModule(
                    chn, self.feat_channels, 3, stride=1, padding=1, conv_cfg=self.conv_cfg,
                    norm_cfg=None, act_cfg=act, bias=no_norm))
        return tower

    def _level_norms(self) -> nn.ModuleList | None:
        """``norms[level][i]`` follows tower conv ``i``; one set for all levels unless
        ``norm_per_level``. None without a norm."""
        if self.norm_cfg is None:
            return None
        sets = len(self.strides) if self.norm_per_level else 1
        return nn.ModuleList(
            nn.ModuleList(build_norm_layer(self.norm_cfg, self.feat_channels)[1]
                          for _ in range(self.stacked_convs))
            for _ in range(sets))

    def _init_cls_convs(self) -> None:
        """Classification tower."""
        if self.dcn_on_last_conv:
            raise ValueError('TunedFCOSHead: dcn_on_last_conv is not supported '
                             '(the head must export to ONNX without custom ops)')
        self.cls_convs = self._tower()
        self.cls_norms = self._level_norms()

    def _init_reg_convs(self) -> None:
        """Regression tower (also carries the centerness branch)."""
        self.reg_convs = self._tower()
        self.reg_norms = self._level_norms()
        self.tower_act = build_activation_layer(self.act_cfg)

    # ------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------
    def forward(self, x: tuple[Tensor, ...]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per-level ``cls_score``, ``bbox_pred``, ``centerness`` (see the class docstring)."""
        return multi_apply(self.forward_single, x, self.scales, self.strides, list(range(len(x))))

    def _run_tower(self, x: Tensor, convs: nn.ModuleList, norms: nn.ModuleList | None,
                   level: int) -> Tensor:
        if norms is None:
            for conv in convs:
                x = conv(x)
            return x
        level_norms = norms[level if self.norm_per_level else 0]
        for conv, norm in zip(convs, level_norms):
            x = self.tower_act(norm(conv(x)))
        return x

    def forward_single(self, x: Tensor, scale: nn.Module, stride: int,
                       level: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """One level: mmdet ``FCOSHead.forward_single``'s outputs, with this level's norms."""
        cls_feat = self._run_tower(x, self.cls_convs, self.cls_norms, level)
        reg_feat = self._run_tower(x, self.reg_convs, self.reg_norms, level)
        cls_score = self.conv_cls(cls_feat)
        bbox_pred = self.conv_reg(reg_feat)
        centerness = self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)
        # scale the bbox_pred of different level; float to avoid overflow when enabling FP16
        bbox_pred = scale(bbox_pred).float()
        if self.norm_on_bbox:
            bbox_pred = bbox_pred.clamp(min=0)  # not F.relu, as mmdet (in-place relu broke autograd)
            if not self.training:
                bbox_pred = bbox_pred * stride
        else:
            bbox_pred = bbox_pred.exp()
        return cls_score, bbox_pred, centerness

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    def loss_by_feat(
        self,
        cls_scores: list[Tensor],
        bbox_preds: list[Tensor],
        centernesses: list[Tensor],
        batch_gt_instances: InstanceList,
        batch_img_metas: list[dict],
        batch_gt_instances_ignore: OptInstanceList = None
    ) -> dict[str, Tensor]:
        """Losses from the head outputs.

        Args:
            cls_scores (list[Tensor]): Per level (N, C, H_l, W_l) logits.
            bbox_preds (list[Tensor]): Per level (N, 4, H_l, W_l) distances (stride units when
                ``norm_on_bbox``).
            centernesses (list[Tensor]): Per level (N, 1, H_l, W_l) logits.
            batch_gt_instances (list[InstanceData]): ``bboxes`` (G_i, 4) ``x1y1x2y2`` pixels and
                ``labels`` (G_i,).
            batch_img_metas (list[dict]): Image metas.
            batch_gt_instances_ignore: Unused in ``'dynamic'`` mode.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_bbox``, ``loss_centerness`` (scalars).
        """
        if self.assign_mode == 'classic':
            return super().loss_by_feat(cls_scores, bbox_preds, centernesses, batch_gt_instances,
                                        batch_img_metas, batch_gt_instances_ignore)
        t = self.get_dynamic_targets(cls_scores, bbox_preds, centernesses, batch_gt_instances)
        flat_cls, flat_bbox, flat_ctr, decoded = t['cls'], t['bbox'], t['centerness'], t['decoded']
        labels = t['labels'].reshape(-1)
        bbox_targets = t['bbox_targets'].reshape(-1, 4)

        pos_inds = ((labels >= 0) & (labels < self.num_classes)).nonzero().reshape(-1)
        num_pos = torch.tensor(len(pos_inds), dtype=torch.float, device=flat_cls.device)
        num_pos = max(reduce_mean(num_pos), 1.0)
        loss_cls = self.loss_cls(
            flat_cls.reshape(-1, self.cls_out_channels), labels, avg_factor=num_pos)

        if len(pos_inds) > 0:
            pos_decoded = decoded.reshape(-1, 4)[pos_inds]
            pos_targets = bbox_targets[pos_inds]
            loss_bbox = self.loss_bbox(pos_decoded, pos_targets, avg_factor=num_pos)
            # IoU-aware centerness: the quality target is the (detached) IoU of the prediction.
            iou_targets = bbox_overlaps(pos_decoded.detach(), pos_targets, is_aligned=True)
            loss_centerness = self.loss_centerness(
                flat_ctr.reshape(-1)[pos_inds], iou_targets, avg_factor=num_pos)
            pos_iou = iou_targets.mean()
        else:
            # Zero, but still attached to the graph so every parameter gets a (zero) gradient.
            loss_bbox = flat_bbox.sum() * 0
            loss_centerness = flat_ctr.sum() * 0
            pos_iou = flat_ctr.new_zeros(())
        # Assignment statistics, logged beside the losses (no 'loss' in the name, so not summed
        # into the loss): positives per ground-truth object and their mean IoU with it.
        num_gts = sum(len(gt) for gt in batch_gt_instances)
        pos_per_gt = flat_ctr.new_tensor(len(pos_inds) / max(num_gts, 1))
        return dict(loss_cls=loss_cls, loss_bbox=loss_bbox, loss_centerness=loss_centerness,
                    pos_per_gt=pos_per_gt, pos_iou=pos_iou)

    def get_dynamic_targets(self, cls_scores: list[Tensor], bbox_preds: list[Tensor],
                            centernesses: list[Tensor],
                            batch_gt_instances: InstanceList) -> dict[str, Tensor]:
        """Flattened head outputs over all levels and their dynamic assignment.

        Args: as :meth:`loss_by_feat`.

        Returns:
            dict[str, Tensor]: ``priors`` (P, 4) ``(x, y, stride_w, stride_h)``; ``level`` (P,) level
            index of each point; ``cls`` (N, P, C) logits; ``bbox`` (N, P, 4) raw distances;
            ``centerness`` (N, P) logits; ``decoded`` (N, P, 4) predicted boxes in pixels;
            ``labels`` (N, P) with ``num_classes`` for background; ``bbox_targets`` (N, P, 4).
        """
        assert len(cls_scores) == len(bbox_preds) == len(centernesses)
        if self.assigner is None:
            raise ValueError('TunedFCOSHead: dynamic targets need train_cfg.assigner '
                             '(see configs/_base_/models/fcos_effb0_bifpn.py)')
        num_imgs = cls_scores[0].size(0)
        featmap_sizes = [featmap.size()[-2:] for featmap in cls_scores]
        # (P, 4): x, y, stride_w, stride_h over all levels -- every level competes for every GT.
        mlvl_priors = self.prior_generator.grid_priors(
            featmap_sizes, dtype=bbox_preds[0].dtype, device=bbox_preds[0].device, with_stride=True)
        priors = torch.cat(mlvl_priors)
        level = torch.cat([torch.full((len(p),), i, dtype=torch.long, device=priors.device)
                           for i, p in enumerate(mlvl_priors)])
        flat_cls = torch.cat([
            c.permute(0, 2, 3, 1).reshape(num_imgs, -1, self.cls_out_channels)
            for c in cls_scores], dim=1)  # (N, P, C)
        flat_bbox = torch.cat([
            b.permute(0, 2, 3, 1).reshape(num_imgs, -1, 4) for b in bbox_preds], dim=1)
        flat_ctr = torch.cat([
            c.permute(0, 2, 3, 1).reshape(num_imgs, -1) for c in centernesses], dim=1)  # (N, P)
        distances = flat_bbox * priors[:, [2, 3, 2, 3]] if self.norm_on_bbox else flat_bbox
        decoded = self.bbox_coder.decode(
            priors[:, :2].expand(num_imgs, -1, -1), distances)  # (N, P, 4) pixels
        labels, bbox_targets = multi_apply(
            self._get_dynamic_targets_single, flat_cls.detach(), decoded.detach(),
            batch_gt_instances, priors=priors)
        return dict(priors=priors, level=level, cls=flat_cls, bbox=flat_bbox, centerness=flat_ctr,
                    decoded=decoded, labels=torch.stack(labels), bbox_targets=torch.stack(bbox_targets))

    def _get_dynamic_targets_single(self, cls_logits: Tensor, decoded_bboxes: Tensor,
                                    gt_instances: InstanceData,
                                    priors: Tensor) -> tuple[Tensor, Tensor]:
        """Dynamic targets of one image.

        Args:
            cls_logits (Tensor): (P, C) class logits (detached).
            decoded_bboxes (Tensor): (P, 4) predicted boxes, ``x1y1x2y2`` pixels (detached).
            gt_instances (InstanceData): ``bboxes`` (G, 4) and ``labels`` (G,).
            priors (Tensor): (P, 4) ``(x, y, stride_w, stride_h)``.

        Returns:
            tuple[Tensor, Tensor]: labels (P,) with ``num_classes`` for background, and box targets
            (P, 4) ``x1y1x2y2`` pixels (zeros for background).
        """
        num_points = priors.size(0)
        labels = torch.full((num_points,), self.num_classes, dtype=torch.long,
                            device=priors.device)
        bbox_targets = priors.new_zeros((num_points, 4))
        if len(gt_instances) == 0:
            return labels, bbox_targets
        pred_instances = InstanceData(priors=priors, scores=cls_logits, bboxes=decoded_bboxes)
        assign_result = self.assigner.assign(pred_instances, gt_instances)
        pos = assign_result.gt_inds > 0
        gt_inds = assign_result.gt_inds[pos] - 1
        labels[pos] = gt_instances.labels[gt_inds].long()
        bbox_targets[pos] = gt_instances.bboxes[gt_inds].to(bbox_targets.dtype)
        return labels, bbox_targets

    # ------------------------------------------------------------------------------------------
    # inference
    # ------------------------------------------------------------------------------------------
    @staticmethod
    def score_from_logits(cls_logits: Tensor, centerness_logits: Tensor) -> Tensor:
        """Detection score ``sqrt(sigmoid(cls) * sigmoid(centerness))``.

        The single definition of the score: inference thresholds and ranks it, and the ONNX export
        rewriter reuses it.

        Args:
            cls_logits (Tensor): (..., C) class logits.
            centerness_logits (Tensor): (...,) centerness logits.

        Returns:
            Tensor: (..., C) scores in [0, 1].
        """
        return (cls_logits.sigmoid() * centerness_logits.sigmoid().unsqueeze(-1)).sqrt()

    def _bbox_post_process(self, results: InstanceData, cfg: ConfigDict, rescale: bool = False,
                           with_nms: bool = True, img_meta: dict | None = None) -> InstanceData:
        """mmdet's post-processing; NMS on the CPU for CUDA results when mmcv has no CUDA kernels
        (``mmcv.ops.nms`` cannot run CUDA tensors then), the results moved back to their device."""
        if with_nms and results.bboxes.is_cuda and not mmcv_has_cuda_ops():
            device = results.bboxes.device
            return super()._bbox_post_process(results.cpu(), cfg, rescale=rescale, with_nms=with_nms,
                                              img_meta=img_meta).to(device)
        return super()._bbox_post_process(results, cfg, rescale=rescale, with_nms=with_nms,
                                          img_meta=img_meta)

    def _predict_by_feat_single(self,
                                cls_score_list: list[Tensor],
                                bbox_pred_list: list[Tensor],
                                score_factor_list: list[Tensor],
                                mlvl_priors: list[Tensor],
                                img_meta: dict,
                                cfg: ConfigDict,
                                rescale: bool = False,
                                with_nms: bool = True) -> InstanceData:
        """Boxes of one image.

        Per level: score = :meth:`score_from_logits`; keep the ``nms_pre`` points with the highest
        best-class score (as mmdeploy's exported graph does); keep (point, class) pairs with score
        > ``score_thr``. Then class-aware NMS over all levels and the ``max_per_img`` best.

        Args:
            cls_score_list (list[Tensor]): Per level (C, H_l, W_l) logits.
            bbox_pred_list (list[Tensor]): Per level (4, H_l, W_l) distances in pixels.
            score_factor_list (list[Tensor]): Per level (1, H_l, W_l) centerness logits.
            mlvl_priors (list[Tensor]): Per level (H_l * W_l, 2) point coordinates.
            img_meta (dict): ``img_shape`` and, with ``rescale``, ``scale_factor``.
            cfg (ConfigDict): Test config; ``self.test_cfg`` when None.
            rescale (bool): Map boxes back to the original image.
            with_nms (bool): Apply NMS and ``max_per_img``.

        Returns:
            InstanceData: ``bboxes`` (K, 4) ``x1y1x2y2``, ``scores`` (K,) sorted descending when
            ``with_nms``, ``labels`` (K,).
        """
        cfg = copy.deepcopy(self.test_cfg if cfg is None else cfg)
        if cfg is None:
            raise ValueError('TunedFCOSHead: predicting needs test_cfg (nms_pre, score_thr, nms, '
                             'max_per_img; see configs/_base_/models/fcos_effb0_bifpn.py)')
        nms_pre = cfg.get('nms_pre', -1)
        score_thr = cfg.get('score_thr', 0)
        mlvl_bbox_preds, mlvl_priors_kept, mlvl_scores, mlvl_labels = [], [], [], []
        for cls_score, bbox_pred, centerness, priors in zip(
                cls_score_list, bbox_pred_list, score_factor_list, mlvl_priors):
            scores = self.score_from_logits(
                cls_score.permute(1, 2, 0).reshape(-1, self.cls_out_channels),
                centerness.permute(1, 2, 0).reshape(-1))
            bbox_pred = bbox_pred.permute(1, 2, 0).reshape(-1, 4)
            if 0 < nms_pre < scores.size(0):
                _, topk_inds = scores.max(dim=1)[0].topk(nms_pre)
                scores, bbox_pred, priors = scores[topk_inds], bbox_pred[topk_inds], priors[topk_inds]
            point_inds, labels = (scores > score_thr).nonzero(as_tuple=True)
            mlvl_scores.append(scores[point_inds, labels])
            mlvl_labels.append(labels)
            mlvl_bbox_preds.append(bbox_pred[point_inds])
            mlvl_priors_kept.append(priors[point_inds])

        results = InstanceData()
        results.bboxes = self.bbox_coder.decode(
            torch.cat(mlvl_priors_kept), torch.cat(mlvl_bbox_preds), max_shape=img_meta['img_shape'])
        results.scores = torch.cat(mlvl_scores)
        results.labels = torch.cat(mlvl_labels)
        # No score_factors: centerness is already inside the score.
        return self._bbox_post_process(results, cfg, rescale=rescale, with_nms=with_nms,
                                       img_meta=img_meta)
