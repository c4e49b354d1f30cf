"""Whether a checkpoint fits a model, and loading weights that must fit exactly; for any model or part.

* :func:`checkpoint_diff` -- what a loaded checkpoint lacks, has in excess and has in another shape, judged
  as mmengine's strict ``load_checkpoint`` judges it (keys revised by :data:`REVISE_KEYS`, BatchNorm's
  ``num_batches_tracked`` allowed to be absent). :func:`checkpoint_fit` and :func:`shape_mismatches` are
  two views of it: ``CheckpointFitsModelHook`` (``tools/test.py``) refuses another model's checkpoint with
  them, ``fcos_plugin.deploy.check_checkpoint`` names what does not fit with the same diff.
* :func:`load_state_dict_exact` -- load a state dict already in a model's layout, every key accounted for:
  what backbones use for ``init_cfg=dict(type='Pretrained', ...)`` instead of mmengine's non-strict load.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from mmengine.model import is_model_wrapper
from torch import Tensor

from .keys import abbreviate_keys, state_dict_diff

__all__ = ['REVISE_KEYS', 'checkpoint_diff', 'checkpoint_fit', 'checkpoint_state_dict', 'is_bn_counter',
           'load_state_dict_exact', 'shape_mismatches']

#: What mmengine's ``load_checkpoint`` (and so the Runner and mmdeploy) does to checkpoint keys by default:
#: weights saved from a DDP-wrapped model lose their ``module.`` prefix.
REVISE_KEYS = [(r'^module\.', '')]


def is_bn_counter(key: str) -> bool:
    """BatchNorm's ``num_batches_tracked`` buffer: absent from some files, never a weight that matters."""
    return key.endswith('num_batches_tracked')


def checkpoint_state_dict(checkpoint: Mapping) -> dict[str, Tensor]:
    """The tensors of a loaded checkpoint's ``state_dict`` (or of the mapping itself, a bare state dict),
    keys revised by :data:`REVISE_KEYS`; empty when there is none."""
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else {}
    if not isinstance(state, Mapping):
        return {}
    for pattern, replacement in REVISE_KEYS:
        state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def checkpoint_diff(model: torch.nn.Module, checkpoint: Mapping,
                    ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    """How a loaded checkpoint differs from ``model``'s weights (``model`` unwrapped from DDP).

    Returns:
        tuple: sorted keys of the model missing from the checkpoint (``num_batches_tracked`` excepted),
        sorted keys of the checkpoint the model does not have, and ``(key, checkpoint shape, model shape)``
        of the tensors both have in different shapes, in the checkpoint's order.
    """
    model = model.module if is_model_wrapper(model) else model
    state = checkpoint_state_dict(checkpoint)
    own = model.state_dict()
    missing, unexpected, mismatched = state_dict_diff(own, state, may_be_missing=is_bn_counter)
    mismatched_keys = set(mismatched)
    shapes = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in mismatched_keys]
    return missing, unexpected, shapes


def checkpoint_fit(model: torch.nn.Module, checkpoint: Mapping) -> tuple[list[str], list[str], int]:
    """Which of ``model``'s weights ``checkpoint`` would fill (:func:`checkpoint_diff`), as mmengine's
    ``load_state_dict`` counts them when the Runner loads it: a tensor of the same name but another shape
    is not loaded either (torch reports it as a size mismatch), so it counts as missing here; BatchNorm's
    ``num_batches_tracked`` is counted on neither side.

    Returns:
        (found, missing, unexpected count): model keys the checkpoint fills and model keys it does not, in
        the model's order, and how many of its own keys the model does not have.
    """
    missing, unexpected, mismatched = checkpoint_diff(model, checkpoint)
    absent = set(missing) | {k for k, _, _ in mismatched}
    model = model.module if is_model_wrapper(model) else model
    own = [k for k in model.state_dict() if not is_bn_counter(k)]
    found = [k for k in own if k not in absent]
    return found, [k for k in own if k in absent], sum(1 for k in unexpected if not is_bn_counter(k))


def shape_mismatches(model: torch.nn.Module, checkpoint: Mapping) -> list[tuple[str, tuple, tuple]]:
    """``(key, checkpoint shape, model shape)`` of the tensors ``checkpoint`` and ``model`` both have with
    different shapes (:func:`checkpoint_diff`)."""
    return checkpoint_diff(model, checkpoint)[2]


def load_state_dict_exact(model: torch.nn.Module, state: Mapping[str, Tensor], source: str, *,
                          droppable: Sequence[str] = (), name: str | None = None,
                          hint: str = '') -> list[str]:
    """Load ``state`` (already in ``model``'s layout) into ``model``, every key accounted for.

    Only ``num_batches_tracked`` buffers may be absent from ``state`` (some ports have none), and only keys
    under the prefixes ``droppable`` may be in ``state`` without a place in ``model`` (e.g. a classifier
    checkpoint's head, loaded into a feature extractor): those are left out and returned.

    Args:
        model: the module to fill.
        state: tensors by ``model``'s own keys.
        source: where ``state`` came from, for the message (a path, a URL).
        droppable: key prefixes the model may lack.
        name: how the message names the model (default: its class name).
        hint: a sentence appended to the message: what to check.

    Returns:
        the keys of ``state`` under ``droppable`` that were left out, sorted (the caller logs them).

    Raises:
        ValueError: naming ``source``, the model, and counting and naming the missing, unexpected and
            differently shaped tensors.
    """
    own = model.state_dict()
    state = dict(state)
    dropped = sorted(k for k in state if k not in own and k.startswith(tuple(droppable)))
    for k in dropped:
        del state[k]
    missing, unexpected, wrong_shape = state_dict_diff(own, state, may_be_missing=is_bn_counter)
    wrong_shape = [f'{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}' for k in wrong_shape]
    problems = [f'{len(keys)} {what}: {abbreviate_keys(keys)}' for what, keys in (
        ('weights of the model missing from the file', missing),
        ('keys of the file with no place in the model', unexpected),
        ('shape mismatches', wrong_shape)) if keys]
    if problems:
        raise ValueError(f'{source} does not fit {name or type(model).__name__}: ' + '; '.join(problems)
                         + (f'. {hint}' if hint else ''))
    model.load_state_dict(state, strict=False)
    return dropped
