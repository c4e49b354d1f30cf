"""MMEngine extensions of the plugin: hooks registered in mmdet's ``HOOKS``."""
from .hooks import (
    ChannelsLastHook,
    CheckpointFitsModelHook,
    CheckpointMismatchError,
    NonFiniteLossError,
    StopOnNonFiniteLossHook,
    checkpoint_fit,
)

__all__ = ['ChannelsLastHook', 'CheckpointFitsModelHook', 'CheckpointMismatchError', 'NonFiniteLossError',
           'StopOnNonFiniteLossHook', 'checkpoint_fit']
