from .hooks import ChannelsLastHook, NonFiniteLossError, StopOnNonFiniteLossHook
from .runtime import adapt_cfg_to_machine

__all__ = ['ChannelsLastHook', 'NonFiniteLossError', 'StopOnNonFiniteLossHook', 'adapt_cfg_to_machine']
