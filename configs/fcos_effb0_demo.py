# CPU-sized FCOS-EfficientNet-B0 on the built-in demo data: same model as fcos_effb0.py (Lite0 ImageNet
# weights, BiFPN, tuned FCOS head), 6 classes, 320x320 inputs, a short schedule without EMA/SyncBN.
_base_ = [
    './_base_/models/fcos_effb0_bifpn.py',
    './_base_/datasets/demo_lmdb_detection.py',
    './_base_/schedules/demo_cpu.py',
    './_base_/default_runtime.py',
]
# short runs: BN running statistics must follow within tens of iterations (PyTorch's default momentum)
bn = dict(type='BN', eps=1e-3, momentum=0.1)
model = dict(backbone=dict(norm_cfg=bn), neck=dict(norm_cfg=bn),
             bbox_head=dict(num_classes=6, norm_cfg=dict(bn, requires_grad=True)))
optim_wrapper = dict(optimizer=dict(lr=0.02))
