"""SimOTA-style dynamic assignment with its cost built from mmdet match costs (used by ``TunedFCOSHead``)."""
from __future__ import annotations

import torch
from mmdet.models.task_modules.assigners import AssignResult, SimOTAAssigner
from mmdet.models.task_modules.assigners.sim_ota_assigner import INF as SIMOTA_INF
from mmdet.registry import TASK_UTILS
from mmdet.utils import ConfigType
from mmengine.structures import InstanceData
from torch import Tensor

__all__ = ['MatchCostSimOTAAssigner']


@TASK_UTILS.register_module()
class MatchCostSimOTAAssigner(SimOTAAssigner):
    """mmdet's :class:`SimOTAAssigner` with its cost built from mmdet match costs.

    mmdet's SimOTA hard-codes ``BCE(probabilities) + 3 * -log(IoU)``; HAT's dynamic FCOS target uses
    a focal classification cost on logits plus a weighted GIoU cost. The candidate test
    (:meth:`get_in_gt_and_in_center_info`) and the dynamic-k matching (:meth:`dynamic_k_matching`:
    k = int(sum of the ``candidate_topk`` largest IoUs), at least 1; a point matched to several GTs
    keeps the lowest-cost one) are the parent's.

    Args:
        center_radius (float): Candidates lie within this many strides of a GT's centre (and inside
            the GT box). Defaults to 2.5.
        candidate_topk (int): Number of largest IoUs summed into the dynamic k. Defaults to 10.
        cls_cost (dict): Match cost on class logits (``pred_instances.scores``, shape (P, C)).
            Defaults to ``FocalLossCost`` (alpha 0.25, gamma 2, weight 1).
        reg_cost (dict): Match cost on decoded boxes. Defaults to ``IoUCost`` (GIoU, weight 2).
        iou_calculator (dict): IoU used for the dynamic k. Defaults to ``BboxOverlaps2D``.
        candidates_only (bool): Keep only positives inside the candidate region of their GT. With
            ``False`` a GT that has fewer candidates than its k also takes the cheapest
            non-candidates, as mmdet's SimOTA does. Defaults to True.
    """

    def __init__(self,
                 center_radius: float = 2.5,
                 candidate_topk: int = 10,
                 cls_cost: ConfigType = dict(type='FocalLossCost', alpha=0.25, gamma=2.0, weight=1.0),
                 reg_cost: ConfigType = dict(type='IoUCost', iou_mode='giou', weight=2.0),
                 iou_calculator: ConfigType = dict(type='BboxOverlaps2D'),
                 candidates_only: bool = True) -> None:
        super().__init__(center_radius=center_radius, candidate_topk=candidate_topk,
                         iou_calculator=iou_calculator)
        self.cls_cost = TASK_UTILS.build(cls_cost)
        self.reg_cost = TASK_UTILS.build(reg_cost)
        self.candidates_only = candidates_only

    def match_cost(self, pred_instances: InstanceData, gt_instances: InstanceData,
                   is_candidate: Tensor) -> Tensor:
        """Cost of matching each prediction to each GT.

        Args:
            pred_instances (InstanceData): ``scores`` (P, C) class logits and ``bboxes`` (P, 4)
                decoded predictions, ``x1y1x2y2`` in pixels.
            gt_instances (InstanceData): ``bboxes`` (G, 4) and ``labels`` (G,).
            is_candidate (Tensor): (P, G) bool, inside the GT box and its centre region.

        Returns:
            Tensor: (P, G) cost; non-candidates cost SimOTA's ``INF`` more.
        """
        # float32: the focal cost takes logs of sigmoids, which underflow in fp16.
        preds = InstanceData(scores=pred_instances.scores.float(),
                             bboxes=pred_instances.bboxes.float())
        cost = self.cls_cost(preds, gt_instances) + self.reg_cost(preds, gt_instances)
        return cost + (~is_candidate) * SIMOTA_INF

    def assign(self,
               pred_instances: InstanceData,
               gt_instances: InstanceData,
               gt_instances_ignore: InstanceData | None = None,
               **kwargs) -> AssignResult:
        """Assign GTs to points.

        Args:
            pred_instances (InstanceData): ``priors`` (P, 4) as ``(x, y, stride_w, stride_h)``,
                ``scores`` (P, C) class logits, ``bboxes`` (P, 4) decoded predictions in pixels.
            gt_instances (InstanceData): ``bboxes`` (G, 4) in pixels and ``labels`` (G,).
            gt_instances_ignore: Unused (SimOTA has no ignore regions).

        Returns:
            AssignResult: ``gt_inds`` (P,) 0 = background, i + 1 = GT i; ``max_overlaps`` (P,) IoU
            of positives with their GT; ``labels`` (P,) -1 for background.
        """
        gt_bboxes = gt_instances.bboxes
        num_gt = gt_bboxes.size(0)
        num_points = pred_instances.bboxes.size(0)
        device = gt_bboxes.device
        assigned_gt_inds = torch.zeros(num_points, dtype=torch.long, device=device)
        max_overlaps = torch.zeros(num_points, device=device)
        assigned_labels = torch.full((num_points,), -1, dtype=torch.long, device=device)
        if num_gt == 0 or num_points == 0:
            return AssignResult(num_gt, assigned_gt_inds, max_overlaps, labels=assigned_labels)

        # valid: inside some GT box or some centre region (the only points whose IoUs enter k).
        valid_mask, is_candidate = self.get_in_gt_and_in_center_info(
            pred_instances.priors, gt_bboxes)
        if not valid_mask.any():
            return AssignResult(num_gt, assigned_gt_inds, max_overlaps, labels=assigned_labels)
        valid_preds = pred_instances[valid_mask]
        pairwise_ious = self.iou_calculator(valid_preds.bboxes.float(), gt_bboxes.float())
        cost = self.match_cost(valid_preds, gt_instances, is_candidate)

        valid_before = valid_mask.clone()
        # The parent narrows valid_mask in place to the matched points.
        matched_ious, matched_gt_inds = self.dynamic_k_matching(
            cost, pairwise_ious, num_gt, valid_mask)
        if self.candidates_only:
            matched_rows = valid_mask[valid_before].nonzero().squeeze(1)
            keep = is_candidate[matched_rows, matched_gt_inds]
            fg_mask = valid_mask.clone()
            fg_mask[valid_mask] = keep
            valid_mask = fg_mask
            matched_ious, matched_gt_inds = matched_ious[keep], matched_gt_inds[keep]

        assigned_gt_inds[valid_mask] = matched_gt_inds + 1
        assigned_labels[valid_mask] = gt_instances.labels[matched_gt_inds].long()
        max_overlaps[valid_mask] = matched_ious.to(max_overlaps.dtype)
        return AssignResult(num_gt, assigned_gt_inds, max_overlaps, labels=assigned_labels)
