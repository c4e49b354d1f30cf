"""Calibration of a QAT model's activation ranges before fine-tuning (registered in mmdet's ``HOOKS``)."""
from __future__ import annotations

import copy

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from .qat import calibrated, finish_calibration, set_mode

__all__ = ['QATCalibrationHook']


@HOOKS.register_module()
class QATCalibrationHook(Hook):
    """Before training, set every activation range of a :class:`~fcos_plugin.quantization.QATFCOS`
    from ``num_images`` train images (min/max of the float model, ONNX Runtime's ``MinMax``), read in
    order through the config's *test* pipeline (the images the deployed model sees), normalised by the
    model's data preprocessor. Skipped when the ranges are already set (resumed or QAT checkpoint).

    Args:
        num_images (int): Calibration images. Defaults to 32.
        batch_size (int): Defaults to 8.
    """

    priority = 'LOW'  # after the checkpoint is loaded and ChannelsLastHook has run

    def __init__(self, num_images: int = 32, batch_size: int = 8) -> None:
        self.num_images = num_images
        self.batch_size = batch_size

    def _dataloader(self, runner):
        from mmengine.runner import Runner
        cfg = runner.cfg
        dl = copy.deepcopy(cfg.train_dataloader)
        dl.dataset.pipeline = [t for t in copy.deepcopy(cfg.test_pipeline)
                               if t['type'] != 'LoadAnnotations']
        dl.dataset.indices = self.num_images  # the first N images
        dl.dataset.test_mode = True
        dl.dataset.pop('filter_cfg', None)
        dl.batch_size = self.batch_size
        dl.num_workers = 0
        dl.persistent_workers = False
        dl.pop('batch_sampler', None)
        dl.sampler = dict(type='DefaultSampler', shuffle=False)
        return Runner.build_dataloader(dl)

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if calibrated(model):
            runner.logger.info('QAT: activation ranges already set (checkpoint), no calibration')
            return
        was_training = model.training
        model.eval()
        set_mode(model, 'observe')
        seen = 0
        try:
            with torch.no_grad():
                for data in self._dataloader(runner):
                    data = model.data_preprocessor(data, False)
                    model._forward(data['inputs'])
                    seen += len(data['inputs'])
        finally:
            set_mode(model, 'quant')
            model.train(was_training)
        n = finish_calibration(model)
        runner.logger.info(f'QAT: calibrated {n} activation ranges (min/max) on {seen} train images')
