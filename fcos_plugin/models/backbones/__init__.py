from .efficientnet import EffNet
from .efficientnet_weights import efficientnet_lite0_checkpoint

__all__ = ['EffNet', 'efficientnet_lite0_checkpoint']
