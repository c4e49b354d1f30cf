"""MMEngine hooks of the plugin (registered in mmdet's ``HOOKS``)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from mmdet.engine.hooks import CheckInvalidLossHook
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ['ChannelsLastHook', 'NonFiniteLossError', 'StopOnNonFiniteLossHook']


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss (message for the user)."""


@HOOKS.register_module()
class StopOnNonFiniteLossHook(CheckInvalidLossHook):
    """Stop training at the first NaN/Inf loss term, before anything is saved.

    mmdet's :class:`CheckInvalidLossHook` checks the total loss every 50 iterations with a bare
    ``assert``; this checks every term every ``interval`` iterations (default 1) and raises
    :class:`NonFiniteLossError` naming the epoch, the iteration and the terms. It runs before the
    checkpoint hook (``priority='ABOVE_NORMAL'``), so the weights the step just updated with the
    non-finite gradient are never written and ``last_checkpoint`` keeps pointing at the last good
    checkpoint; ``tools/train.py`` turns the error into a message and exit status 1.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, interval: int = 1) -> None:
        super().__init__(interval=interval)

    def after_train_iter(self, runner, batch_idx: int, data_batch: Optional[dict] = None,
                         outputs: Optional[dict] = None) -> None:
        if not outputs or not self.every_n_train_iters(runner, self.interval):
            return
        bad = {k: float(v) for k, v in outputs.items()
               if 'loss' in k and isinstance(v, torch.Tensor) and not torch.isfinite(v).all()}
        if not bad:
            return
        last = None
        try:
            with open(f'{runner.work_dir}/last_checkpoint') as f:
                last = f.read().strip()
        except OSError:
            pass
        terms = ', '.join(f'{k}={"nan" if math.isnan(v) else v}' for k, v in bad.items())
        raise NonFiniteLossError(
            f'non-finite loss at epoch {runner.epoch + 1}, iteration {runner.iter + 1}: {terms}. '
            'Training stopped before saving this step. Lower the learning rate (or check the data '
            'and the warm-up), then restart' +
            (f' or --resume {last} (the last checkpoint, saved before the loss broke).' if last else '.'))


@HOOKS.register_module()
class ChannelsLastHook(Hook):
    """Run the model's convolutions in ``channels_last`` (NHWC) memory format.

    On CPUs, oneDNN's convolutions -- above all EfficientNet's expanded depthwise ones -- run much
    faster on NHWC tensors than on PyTorch's default NCHW layout (``benchmarks/bench_demo_speed.py``
    measures it). Converting the parameters once makes every convolution pick NHWC for its output,
    so the whole network, backward included, stays in that layout; the data preprocessor's NCHW
    batch is taken as it is. The numbers a layer computes are the same up to float rounding.

    Checkpoints are unaffected in content (``torch.save`` keeps values; loading copies them into
    whatever layout the target parameters have), and ONNX export builds its own model.

    Args:
        enabled (bool): Convert only when True, so a config can switch it off with
            ``--cfg-options custom_hooks.0.enabled=False``. Defaults to True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled

    def before_run(self, runner) -> None:
        if not self.enabled:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        model.to(memory_format=torch.channels_last)
