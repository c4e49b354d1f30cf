"""FLOP counting rules of fcos_plugin.analysis.complexity on a toy detector whose cost is known by
construction: convolutions agree exactly with torch's FlopCounterMode, elementwise ops cost one per output
element, reductions one per *input* element (an N-to-1 mean is N operations, not 1)."""
from __future__ import annotations

import torch

from fcos_plugin.analysis.complexity import detector_complexity


class _SqueezeExcite(torch.nn.Module):
    """conv -> relu -> x * sigmoid(mean over H, W): an SE-style block with one reduction."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)

    def _forward(self, x):
        y = torch.relu(self.conv(x))
        return y * torch.sigmoid(y.mean((2, 3), keepdim=True)) + y.sum((2, 3), keepdim=True)


def test_reductions_cost_their_input_and_convs_match_torch():
    n, h, w = 2, 16, 12
    r = detector_complexity(_SqueezeExcite(), (n, 3, h, w))
    y = n * 8 * h * w  # elements of the conv output
    conv = y * 3 * 3 * 3  # multiply-adds
    assert r.matmul_flops == r.reference_matmul_flops == conv
    assert r.by_operator['mean'] == y and r.by_operator['sum'] == y  # one per input element
    # relu, sigmoid (on n*8 means), mul, add: one per output element
    assert r.flops == conv + y + y + y + n * 8 + y + y
    assert r.uncounted_ops == {}
