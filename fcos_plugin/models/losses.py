"""Losses that run on any device with the CPU-only mmcv build of this project."""
import torch.nn.functional as F
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS
from torch import Tensor

__all__ = ['PyFocalLoss']


@MODELS.register_module()
class PyFocalLoss(FocalLoss):
    """mmdet's sigmoid :class:`~mmdet.models.losses.FocalLoss`, always computed in PyTorch.

    mmdet's ``FocalLoss`` dispatches to mmcv's compiled ``sigmoid_focal_loss`` whenever the
    prediction is on CUDA; this project's mmcv is built without CUDA kernels, so that path raises
    "not compiled with GPU support". Giving integer labels to the parent as one-hot targets makes it
    take its pure-PyTorch ``py_sigmoid_focal_loss`` branch on every device (the very branch it uses
    on CPU), so the value is identical to ``FocalLoss`` on CPU.

    Args: as :class:`~mmdet.models.losses.FocalLoss` (``use_sigmoid=True`` only).
    """

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Tensor | None = None,
                avg_factor: float | None = None,
                reduction_override: str | None = None) -> Tensor:
        """Compute the focal loss.

        Args:
            pred (Tensor): Logits, shape (N, C).
            target (Tensor): Labels in ``[0, C]`` (``C`` = background), shape (N,), or a one-hot /
                soft target of shape (N, C).
            weight (Tensor, optional): Per-sample weight (N,) or per-element weight (N, C).
            avg_factor (float, optional): Normaliser of the summed loss.
            reduction_override (str, optional): ``'none'``, ``'mean'`` or ``'sum'``.

        Returns:
            Tensor: Scalar loss, or (N, C) with ``reduction='none'``.
        """
        if self.use_sigmoid and not self.activated and pred.dim() != target.dim():
            num_classes = pred.size(1)
            # The background label C becomes an all-zero row, as in FocalLoss's CPU branch.
            target = F.one_hot(target, num_classes=num_classes + 1)[:, :num_classes]
        return super().forward(pred, target, weight=weight, avg_factor=avg_factor,
                               reduction_override=reduction_override)
