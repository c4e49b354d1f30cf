"""MMEngine extensions of the plugin: hooks registered in mmdet's ``HOOKS``."""
from .hooks import (
    ChannelsLastHook,
    CheckpointFitsModelHook,
    CheckpointMismatchError,
    NonFiniteLossError,
    NumClassesMatchDatasetHook,
    NumClassesMismatchError,
    StopOnNonFiniteLossHook,
    all_finite,
    checkpoint_fit,
    shape_mismatches,
)

__all__ = ['ChannelsLastHook', 'CheckpointFitsModelHook', 'CheckpointMismatchError', 'NonFiniteLossError',
           'NumClassesMatchDatasetHook', 'NumClassesMismatchError', 'StopOnNonFiniteLossHook', 'all_finite',
           'checkpoint_fit', 'shape_mismatches']
