# mmdet's own FCOS with a small ResNet-18 (from scratch) on the built-in demo LMDB.
# Proves the data/tool chain independently of the EfficientNet model: CPU minutes.
_base_ = [
    './_base_/datasets/demo_lmdb_detection.py',
    './_base_/schedules/demo_cpu.py',
    './_base_/demo_runtime.py',
]
model = dict(
    type='FCOS',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[128.0] * 3, std=[128.0] * 3,
                           bgr_to_rgb=True, pad_size_divisor=32),
    backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(1, 2, 3), frozen_stages=-1,
                  norm_cfg=dict(type='BN', requires_grad=True), norm_eval=False, style='pytorch',
                  init_cfg=None),
    neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=64, start_level=0,
              add_extra_convs='on_output', num_outs=5, relu_before_extra_convs=True),
    bbox_head=dict(
        type='FCOSHead', num_classes=6, in_channels=64, stacked_convs=2, feat_channels=64,
        strides=[8, 16, 32, 64, 128], norm_cfg=dict(type='GN', num_groups=16, requires_grad=True),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=100))
