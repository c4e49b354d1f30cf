# mmdet's own RTMDet-tiny on the built-in demo data, for the same-budget comparison of
# benchmarks/bench_demo_peers.py. The model is mmdet 3.3.0's rtmdet_tiny_8xb32-300e_coco.py model
# (CSPNeXt-tiny + PAFPN + shared-conv SepBN head, dynamic soft-label assignment, QFL + 2 GIoU),
# changed only in: 6 classes, no ImageNet weights (every compared model starts from scratch; none
# can be downloaded here) and BN instead of SyncBN (one CPU process). tests/test_tools/test_configs.py
# checks it against mmdet's config. Its own optimizer (AdamW 0.004, wd 0.05, no clipping) and EMA are
# kept; data pipeline, input size (320), batch and schedule (iterations, warm-up, cosine) are the
# demo's, as for every compared model. An old-style config cannot inherit mmdet's file beside our data
# bases (overlapping keys), hence the model written out here.
_base_ = [
    './_base_/datasets/demo_lmdb_detection.py',
    './_base_/schedules/demo_cpu.py',
    './_base_/demo_runtime.py',
]
norm_cfg = dict(type='BN')
act_cfg = dict(type='SiLU', inplace=True)
model = dict(
    type='RTMDet',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
                           std=[57.375, 57.12, 58.395], bgr_to_rgb=False, batch_augments=None),
    backbone=dict(type='CSPNeXt', arch='P5', expand_ratio=0.5, deepen_factor=0.167, widen_factor=0.375,
                  channel_attention=True, norm_cfg=norm_cfg, act_cfg=act_cfg, init_cfg=None),
    neck=dict(type='CSPNeXtPAFPN', in_channels=[96, 192, 384], out_channels=96, num_csp_blocks=1,
              expand_ratio=0.5, norm_cfg=norm_cfg, act_cfg=act_cfg),
    bbox_head=dict(
        type='RTMDetSepBNHead', num_classes=6, in_channels=96, stacked_convs=2, feat_channels=96,
        anchor_generator=dict(type='MlvlPointGenerator', offset=0, strides=[8, 16, 32]),
        bbox_coder=dict(type='DistancePointBBoxCoder'),
        loss_cls=dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        with_objectness=False, exp_on_reg=False, share_conv=True, pred_kernel_size=1,
        norm_cfg=norm_cfg, act_cfg=act_cfg),
    train_cfg=dict(assigner=dict(type='DynamicSoftLabelAssigner', topk=13), allowed_border=-1,
                   pos_weight=-1, debug=False),
    test_cfg=dict(nms_pre=30000, min_bbox_size=0, score_thr=0.001, nms=dict(type='nms', iou_threshold=0.65),
                  max_per_img=300))
optim_wrapper = dict(
    _delete_=True, type='OptimWrapper', optimizer=dict(type='AdamW', lr=0.004, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0, bias_decay_mult=0, bypass_duplicate=True))
custom_hooks = [dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
                     priority=49)]
