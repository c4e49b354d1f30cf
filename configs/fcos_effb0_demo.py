# CPU-sized FCOS-EfficientNet-B0 on the built-in demo data: same model as fcos_effb0.py (Lite0 ImageNet
# weights, BiFPN, tuned FCOS head), 6 classes, 320x320 inputs, a short schedule without EMA/SyncBN.
_base_ = [
    './_base_/models/fcos_effb0_bifpn.py',
    './_base_/datasets/demo_lmdb_detection.py',
    './_base_/schedules/demo_cpu.py',
    './_base_/default_runtime.py',
]
model = dict(bbox_head=dict(num_classes=6))
optim_wrapper = dict(optimizer=dict(lr=0.02))
