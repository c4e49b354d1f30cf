from .runtime import adapt_cfg_to_machine

__all__ = ['adapt_cfg_to_machine']
