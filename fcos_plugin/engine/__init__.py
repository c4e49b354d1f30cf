from .hooks import ChannelsLastHook, NonFiniteLossError, StopOnNonFiniteLossHook
from .options import literal_dicts
from .runtime import adapt_cfg_to_machine

__all__ = ['ChannelsLastHook', 'NonFiniteLossError', 'StopOnNonFiniteLossHook', 'adapt_cfg_to_machine',
           'literal_dicts']
