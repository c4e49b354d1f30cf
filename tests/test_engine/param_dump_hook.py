"""Test-only hook (imported by the DDP test through ``custom_imports``): every rank saves its parameters
before and after the first training iteration, its rank, the world size and the images of its first
batch to ``WORK_DIR/params_rank<r>.pt``."""
from __future__ import annotations

import os.path as osp

import torch
from mmdet.registry import HOOKS
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook


@HOOKS.register_module()
class DumpParamsAfterFirstStepHook(Hook):
    priority = 'VERY_LOW'  # after the optimizer step (OptimWrapper runs inside train_step)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter == 0:
            self._init = {k: v.detach().clone() for k, v in self._model(runner).named_parameters()}

    @staticmethod
    def _model(runner):
        return getattr(runner.model, 'module', runner.model)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter != 0:  # runner.iter is still the index of the iteration that just ran
            return
        params = {k: v.detach().clone() for k, v in self._model(runner).named_parameters()}
        torch.save(dict(init=self._init, params=params, rank=get_rank(), world_size=get_world_size(),
                        img_ids=[s.img_id for s in data_batch['data_samples']]),
                   osp.join(runner.work_dir, f'params_rank{get_rank()}.pt'))
