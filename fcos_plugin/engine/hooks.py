"""MMEngine hooks of the plugin (registered in mmdet's ``HOOKS``)."""
from __future__ import annotations

import math

import torch
from mmdet.engine.hooks import CheckInvalidLossHook
from mmdet.registry import HOOKS
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..utils.checkpoint import checkpoint_fit, shape_mismatches
from ..utils.config_check import ConfigError, num_classes_problem

__all__ = ['ChannelsLastHook', 'CheckpointFitsModelHook', 'CheckpointMismatchError', 'NonFiniteLossError',
           'NumClassesMatchDatasetHook', 'NumClassesMismatchError', 'StopOnNonFiniteLossHook', 'all_finite',
           'checkpoint_fit', 'shape_mismatches']


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss, gradient or weight (message for the user)."""


def _non_finite_names(named: list[tuple[str, torch.Tensor]]) -> list[str]:
    return [name for name, t in named if not bool(torch.isfinite(t).all())]


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of ``tensors`` (floating point) is finite.

    Fast path: one fused ``_foreach_norm`` (L2, NaN/Inf propagate) and one reduction over its results
    -- no copy of the weights, no Python loop over the tensors; ~1.5 ms for the demo model's 3.5 M
    values on 2 CPU threads (order inf, the exact form, is 10-100x slower on CPU). A norm can overflow
    for huge finite values (> ~1e19), so a non-finite norm is confirmed tensor by tensor."""
    if not tensors:
        return True
    with torch.no_grad():
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors, 2))).all()):
            return True
        return all(bool(torch.isfinite(t).all()) for t in tensors)


def _model_tensors(runner) -> list[tuple[str, torch.Tensor]]:
    """The model's parameters and floating-point buffers (BN running statistics), by name."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return [(name, t) for name, t in (*model.named_parameters(), *model.named_buffers())
            if t.is_floating_point()]


@HOOKS.register_module()
class StopOnNonFiniteLossHook(CheckInvalidLossHook):
    """Stop training at the first NaN/Inf loss term or weight, before anything non-finite is saved.

    mmdet's :class:`CheckInvalidLossHook` checks the total loss every 50 iterations with a bare
    ``assert``. This checks every loss term every ``interval`` iterations (default 1) and, with
    ``check_weights`` (default), the model's parameters and floating-point buffers (BN running
    statistics) after the optimizer step of those iterations, and again before any checkpoint is
    written (``before_save_checkpoint``, whatever the interval). A huge learning rate makes the gradient,
    then the weights and BN statistics, non-finite one step or more before the loss is: a check of
    the loss alone would let such a step's weights be saved. It raises :class:`NonFiniteLossError`
    naming the epoch, the iteration, the terms or tensors, the gradient norm when the optimizer wrapper
    logged one (``clip_grad``; often huge or non-finite then), and the last checkpoint, whose weights are
    finite since every save is checked. It runs before the checkpoint hook (``priority='ABOVE_NORMAL'``), so
    ``last_checkpoint`` keeps pointing at the last good checkpoint; ``tools/train.py`` turns the error
    into a message and exit status 1.

    The weight check is one fused reduction (:func:`all_finite`, ~1.5 ms per iteration for the demo
    model on 2 CPU threads, ~0.2% of an iteration); the tensors are named only once it fails.
    """

    priority = 'ABOVE_NORMAL'

    def __init__(self, interval: int = 1, check_weights: bool = True) -> None:
        super().__init__(interval=interval)
        self.check_weights = check_weights

    def after_train_iter(self, runner, batch_idx: int, data_batch: dict | None = None,
                         outputs: dict | None = None) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        bad = {k: float(v.detach()) for k, v in (outputs or {}).items()
               if 'loss' in k and isinstance(v, torch.Tensor) and not torch.isfinite(v).all()}
        if bad:
            terms = ', '.join(f'{k}={"nan" if math.isnan(v) else v}' for k, v in bad.items())
            self._stop(runner, f'non-finite loss at epoch {runner.epoch + 1}, iteration {runner.iter + 1}: '
                       f'{terms}')
        if self.check_weights:
            self._check_weights(runner, f'after epoch {runner.epoch + 1}, iteration {runner.iter + 1}')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.check_weights:
            meta = checkpoint.get('meta') or {}  # epoch and iteration as the checkpoint records them
            self._check_weights(runner, f'at epoch {meta.get("epoch", runner.epoch)}, iteration '
                                f'{meta.get("iter", runner.iter)}, when saving a checkpoint')

    def _check_weights(self, runner, when: str) -> None:
        named = _model_tensors(runner)
        if all_finite([t for _, t in named]):
            return
        names = _non_finite_names(named)
        if not names:  # (cannot happen: the fused check and the per-tensor one agree)
            return
        shown = ', '.join(names[:3]) + (', ...' if len(names) > 3 else '')
        self._stop(runner, f'non-finite weights {when}: {len(names)} of the model\'s {len(named)} tensors '
                   f'hold NaN/Inf ({shown})')

    @staticmethod
    def _stop(runner, what: str) -> None:
        grad = ''  # logged by mmengine's optimizer wrapper when the config clips gradients
        try:
            norm = float(runner.message_hub.get_scalar('train/grad_norm').current())
            grad = f' (gradient norm of the last step: {norm:.3g})'
        except (KeyError, AttributeError, TypeError, ValueError):
            pass
        last = None
        try:
            with open(f'{runner.work_dir}/last_checkpoint') as f:
                last = f.read().strip() or None
        except OSError:
            pass
        then = (f' Nothing non-finite was saved: the last checkpoint, {last}, holds finite weights. Lower '
                'the learning rate (optim_wrapper.optimizer.lr) or check the data and the warm-up, then '
                f'train again, from scratch or from those weights with --cfg-options load_from={last} '
                '(--resume would restore the learning rate schedule that diverged).' if last else
                ' No checkpoint was saved. Lower the learning rate (optim_wrapper.optimizer.lr) or check '
                'the data and the warm-up, then train again.')
        raise NonFiniteLossError(f'{what}{grad}. Training stopped before saving this step.{then}')


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
        if total == 0:
            return
        name = f'checkpoint {runner.cfg.get("load_from")} does not fit config {runner.cfg.filename}'
        if len(found) < self.min_fraction * total:
            shown = ', '.join(missing[:3]) + (', ...' if len(missing) > 3 else '')
            raise CheckpointMismatchError(
                f'{name}: only {len(found)} of the model\'s {total} weights are in it with the same name '
                f'and shape (fewer than {self.min_fraction:.0%}), and {unexpected} of its tensors are '
                f'unknown to the model -- it was saved for another model (not found: {shown}). Nothing '
                'was evaluated; use the config the checkpoint was trained with.')
        # the same model with other sizes (num_classes above all): mmengine would leave those tensors
        # random with a size-mismatch warning and evaluate (mAP 0.099 instead of 0.625, exit 0)
        mismatched = shape_mismatches(runner.model, checkpoint)
        if mismatched:
            shown = ', '.join(f'{k} {a} in the checkpoint vs {b} in the model'
                              for k, a, b in mismatched[:2]) + (', ...' if len(mismatched) > 2 else '')
            classes = ((checkpoint.get('meta') or {}).get('dataset_meta') or {}).get('classes')
            trained = (f' It was trained for {len(classes)} classes ({", ".join(map(str, classes[:6]))}'
                       f'{", ..." if len(classes) > 6 else ""}): model.bbox_head.num_classes and the '
                       'dataset\'s classes must say the same.' if classes else '')
            raise CheckpointMismatchError(
                f'{name}: {len(mismatched)} of its tensors have another shape than the model\'s ({shown}) '
                f'and would be left random.{trained} Nothing was evaluated; use the config the checkpoint '
                'was trained with.')


class NumClassesMismatchError(ConfigError):
    """A head's ``num_classes`` disagrees with the dataset's classes (message for the user)."""


@HOOKS.register_module()
class NumClassesMatchDatasetHook(Hook):
    """Stop before training or testing when a head's ``num_classes`` disagrees with the classes of a
    dataset the run uses (its ``metainfo['classes']``: the config's ``metainfo`` or, by default, every
    category of the pack).

    mmdet's :class:`NumClassCheckHook` asserts the same, but only at the start of train and val epochs
    (not for ``tools/test.py``) and with an ``AssertionError``. Unchecked, too few classes end training
    in an ``IndexError`` inside mmdet's match cost, and a test with another ``num_classes`` than the
    checkpoint's evaluates a random class layer. This runs in ``before_run`` -- the dataloaders of the
    run's loops are built, nothing is loaded or trained yet -- for every loop built (train and val,
    or test), modules as mmdet's hook finds them (``num_classes``, RPN heads excepted), and raises
    :class:`NumClassesMismatchError` with one line naming both numbers and what to change. Set as
    ``default_hooks.check_classes`` by ``configs/_base_/default_runtime.py``; ``tools/train.py`` and
    ``tools/test.py`` add it to configs that lack it.
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        from mmengine.runner import BaseLoop
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        heads = [(name, module.num_classes) for name, module in model.named_modules()
                 if name and isinstance(getattr(module, 'num_classes', None), int)
                 and not name.endswith('rpn_head')]
        for attr, key in (('_train_loop', 'train_dataloader'), ('_val_loop', 'val_dataloader'),
                          ('_test_loop', 'test_dataloader')):
            loop = getattr(runner, attr, None)
            dataloader = getattr(loop, 'dataloader', None) if isinstance(loop, BaseLoop) else None
            metainfo = getattr(getattr(dataloader, 'dataset', None), 'metainfo', None) or {}
            classes = metainfo.get('classes')
            for name, num_classes in heads:
                problem = num_classes_problem(num_classes, classes, f'model.{name}', f'{key}.dataset')
                if problem:
                    raise NumClassesMismatchError(problem)
