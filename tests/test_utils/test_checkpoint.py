"""fcos_plugin.utils.checkpoint: the one "does this checkpoint fit the model" (the test tool's hook and the
deploy check judge by it) and the exact loader any backbone loads pretrained weights with."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fcos_plugin.utils.checkpoint import (
    checkpoint_diff,
    checkpoint_fit,
    checkpoint_state_dict,
    load_state_dict_exact,
    shape_mismatches,
)


class _Net(nn.Module):
    """A conv, a BN (with its ``num_batches_tracked``) and a submodule whose name starts with ``module``."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)
        self.modulex = nn.Linear(4, classes)


def test_ddp_prefix_is_revised_and_nothing_else():
    """``module.`` (a DDP-wrapped model's prefix) is stripped as mmengine strips it; ``modulex.`` is a
    module's own name and stays (``^module.`` with an unescaped dot would strip ``modulex.`` too)."""
    state = _Net().state_dict()
    ddp = {f'module.{k}': v for k, v in state.items()}
    assert checkpoint_state_dict({'state_dict': ddp}).keys() == state.keys()
    assert checkpoint_state_dict(state).keys() == state.keys()  # a bare state dict
    found, missing, unexpected = checkpoint_fit(_Net(), {'state_dict': ddp, 'meta': {}})
    assert 'modulex.weight' in found and not missing and unexpected == 0


def test_fit_counts_shape_mismatches_as_missing_in_model_order():
    other = _Net(classes=5).state_dict()
    other.pop('conv.bias')
    other.pop('bn.num_batches_tracked')  # may be absent: counted on neither side
    other['extra.weight'] = torch.zeros(1)
    model = _Net()
    found, missing, unexpected = checkpoint_fit(model, {'state_dict': other})
    assert missing == ['conv.bias', 'modulex.weight', 'modulex.bias']  # the model's order
    assert found == ['conv.weight', 'bn.weight', 'bn.bias', 'bn.running_mean', 'bn.running_var']
    assert unexpected == 1
    assert shape_mismatches(model, {'state_dict': other}) == [
        ('modulex.weight', (5, 4), (3, 4)), ('modulex.bias', (5,), (3,))]
    assert checkpoint_diff(model, {'state_dict': other}) == (
        ['conv.bias'], ['extra.weight'], [('modulex.weight', (5, 4), (3, 4)), ('modulex.bias', (5,), (3,))])


def test_exact_loader_loads_everything_and_drops_only_what_it_may():
    source = _Net()
    state = dict(source.state_dict(), **{'head.fc.weight': torch.zeros(2)})
    target = _Net()
    assert load_state_dict_exact(target, state, 'src.pth', droppable=('head.',)) == ['head.fc.weight']
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    state.pop('bn.num_batches_tracked')  # some ports have none
    assert load_state_dict_exact(_Net(), state, 'src.pth', droppable=('head.',)) == ['head.fc.weight']


def test_exact_loader_names_the_file_the_model_and_every_problem():
    state = _Net(classes=5).state_dict()
    state.pop('conv.weight')
    state['stray.weight'] = torch.zeros(1)
    target = _Net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_state_dict_exact(target, state, 'src.pth', name='Net(x)', hint='Check the arch.')
    assert str(info.value) == (
        'src.pth does not fit Net(x): 1 weights of the model missing from the file: conv.weight; '
        '1 keys of the file with no place in the model: stray.weight; 2 shape mismatches: '
        'modulex.bias: file (5,) vs model (3,), modulex.weight: file (5, 4) vs model (3, 4). Check the arch.')
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing loaded
