from .hooks import ChannelsLastHook
from .runtime import adapt_cfg_to_machine

__all__ = ['ChannelsLastHook', 'adapt_cfg_to_machine']
