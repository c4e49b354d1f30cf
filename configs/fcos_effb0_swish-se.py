# fcos_effb0 with the original EfficientNet-B0 (swish, squeeze-excitation, symmetric padding): the
# torchvision-compatible variant (weights map one-to-one onto torchvision's efficientnet_b0).
# No ImageNet weights for it can be downloaded here: it starts from scratch unless you set
# init_cfg=dict(type='Pretrained', checkpoint=PATH) to a converted torchvision checkpoint.
_base_ = './fcos_effb0.py'
model = dict(
    backbone=dict(arch='b0', act_cfg=dict(type='SiLU'), se_ratio=0.25, padding='symmetric',
                  init_cfg=None),
    neck=dict(act_cfg=dict(type='SiLU')))
