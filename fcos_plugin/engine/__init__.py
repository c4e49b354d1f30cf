from .hooks import (
    ChannelsLastHook,
    CheckpointFitsModelHook,
    CheckpointMismatchError,
    NonFiniteLossError,
    StopOnNonFiniteLossHook,
    checkpoint_fit,
)
from .options import literal_dicts
from .runtime import adapt_cfg_to_machine

__all__ = ['ChannelsLastHook', 'CheckpointFitsModelHook', 'CheckpointMismatchError', 'NonFiniteLossError',
           'StopOnNonFiniteLossHook', 'adapt_cfg_to_machine', 'checkpoint_fit', 'literal_dicts']
