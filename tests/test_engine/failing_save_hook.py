"""Test-only pieces (imported by the best-checkpoint test through ``custom_imports``):

* ``ValidationCounter`` -- a metric whose ``count`` is 1, 2, 3... at successive validations, so that with
  ``save_best='count'`` every validation gives a new best checkpoint;
* ``FailSecondBestSaveHook`` -- raises while the second best checkpoint is being saved (before anything is
  written), as a full disk, a kill or an I/O error would (``fail_at=0``: never).
"""
from __future__ import annotations

from mmdet.registry import HOOKS, METRICS
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook


@METRICS.register_module()
class ValidationCounter(BaseMetric):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def process(self, data_batch, data_samples) -> None:
        self.results.append(len(data_samples))

    def compute_metrics(self, results: list) -> dict:
        self.calls += 1
        return dict(count=float(self.calls))


class SimulatedSaveFailure(RuntimeError):
    pass


@HOOKS.register_module()
class FailSecondBestSaveHook(Hook):
    def __init__(self, fail_at: int = 2) -> None:
        self.fail_at = fail_at  # 0: never
        self.best_saves = 0

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'optimizer' in checkpoint:  # (best checkpoints are saved without the optimizer)
            return
        self.best_saves += 1
        if self.best_saves == self.fail_at:
            raise SimulatedSaveFailure(f'simulated failure while saving best checkpoint {self.fail_at}')
