"""MMEngine hooks of the plugin (registered in mmdet's ``HOOKS``)."""
from __future__ import annotations

import torch
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ['ChannelsLastHook']


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
