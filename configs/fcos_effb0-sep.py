# fcos_effb0 with EfficientDet-D0's head shape: depthwise-separable tower convs, 3 per tower (the BiFPN is
# separable already). The like-for-like comparison with EfficientDet-D0 (3.9 M params, 2.54 GFLOPs at 512).
_base_ = './fcos_effb0.py'
model = dict(bbox_head=dict(use_separable=True, stacked_convs=3))
