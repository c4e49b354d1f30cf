"""Key lists shortened for error messages (state-dict keys, checkpoint keys)."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor


def abbreviate_keys(keys: Sequence[str], limit: int = 8) -> str:
    """The first ``limit`` keys, comma-separated, then how many more there are."""
    keys = list(keys)
    more = f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def state_dict_diff(own: Mapping[str, Tensor], state: Mapping[str, Tensor],
                    may_be_missing: Callable[[str], bool] = lambda key: False,
                    ) -> tuple[list[str], list[str], list[str]]:
    """How ``state`` differs from a model's own ``state_dict()`` ``own``, for a strict load.

    Returns:
        tuple: sorted keys of ``own`` missing from ``state`` (except those ``may_be_missing``),
        sorted keys of ``state`` not in ``own``, and sorted common keys whose shapes differ.
    """
    missing = sorted(k for k in own if k not in state and not may_be_missing(k))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    return missing, unexpected, mismatched
