from .efficientnet import EffNet, EffNetClassifier
from .efficientnet_weights import efficientnet_lite0_checkpoint

__all__ = ['EffNet', 'EffNetClassifier', 'efficientnet_lite0_checkpoint']
