"""MMEngine hooks of the plugin (registered in mmdet's ``HOOKS``)."""
from __future__ import annotations

import math
import re

import torch
from mmdet.engine.hooks import CheckInvalidLossHook
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

__all__ = ['ChannelsLastHook', 'CheckpointFitsModelHook', 'CheckpointMismatchError', 'NonFiniteLossError',
           'StopOnNonFiniteLossHook', 'checkpoint_fit']


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

    def after_train_iter(self, runner, batch_idx: int, data_batch: dict | None = None,
                         outputs: dict | None = None) -> None:
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


class CheckpointMismatchError(ValueError):
    """A checkpoint holds too few of a model's weights to be a checkpoint of that model (message for the
    user)."""


def checkpoint_fit(model: torch.nn.Module, checkpoint: dict) -> tuple[list[str], list[str], int]:
    """Which of ``model``'s weights ``checkpoint`` would fill, counted as mmengine's ``load_state_dict``
    counts missing keys when the Runner loads it: its ``state_dict`` (or the dict itself), keys revised
    by the Runner's default ``^module.`` -> ``''``, the model unwrapped from DDP, BatchNorm's
    ``num_batches_tracked`` not counted; a tensor of the same name but another shape is not loaded
    either (torch reports it as a size mismatch), so it counts as missing here.

    Returns:
        (found, missing, unexpected count): model keys the checkpoint fills, model keys it does not, and
        how many of its own keys the model does not have.
    """
    model = model.module if is_model_wrapper(model) else model
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else {}
    state = {re.sub(r'^module.', '', k): v for k, v in state.items()} if isinstance(state, dict) else {}
    own = {k: v for k, v in model.state_dict().items() if 'num_batches_tracked' not in k}
    found = [k for k, v in own.items()
             if isinstance(state.get(k), torch.Tensor) and state[k].shape == v.shape]
    found_keys = set(found)
    missing = [k for k in own if k not in found_keys]
    unexpected = sum(1 for k in state if k not in own and 'num_batches_tracked' not in k)
    return found, missing, unexpected


@HOOKS.register_module()
class CheckpointFitsModelHook(Hook):
    """Refuse a checkpoint that is not the model's: fewer than ``min_fraction`` (default: half) of the
    model's weights found in it under their names with their shapes (:func:`checkpoint_fit`).

    mmengine loads such a checkpoint with ``strict=False``, logs the unmatched keys and evaluates a model
    that is mostly random (an R18 checkpoint under the EfficientNet config: mAP 0.0, exit 0).
    ``tools/test.py`` adds this hook; it runs when the checkpoint has been read, before any weight is
    copied, and raises :class:`CheckpointMismatchError` naming the checkpoint, the config and the count.
    Training's ``load_from`` is not checked: fine-tuning from a partly matching checkpoint is deliberate
    there (mmengine's warning lists the keys).
    """

    priority = 'VERY_HIGH'

    def __init__(self, min_fraction: float = 0.5) -> None:
        self.min_fraction = min_fraction

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        found, missing, unexpected = checkpoint_fit(runner.model, checkpoint)
        total = len(found) + len(missing)
        if total == 0 or len(found) >= self.min_fraction * total:
            return
        shown = ', '.join(missing[:3]) + (', ...' if len(missing) > 3 else '')
        raise CheckpointMismatchError(
            f'checkpoint {runner.cfg.get("load_from")} does not fit config {runner.cfg.filename}: only '
            f'{len(found)} of the model\'s {total} weights are in it with the same name and shape (fewer '
            f'than {self.min_fraction:.0%}), and {unexpected} of its tensors are unknown to the model -- it '
            f'was saved for another model (not found: {shown}). Nothing was evaluated; use the config the '
            'checkpoint was trained with.')
