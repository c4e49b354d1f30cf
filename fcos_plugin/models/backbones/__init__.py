from .efficientnet import EffNet, efficientnet_lite0_checkpoint

__all__ = ['EffNet', 'efficientnet_lite0_checkpoint']
