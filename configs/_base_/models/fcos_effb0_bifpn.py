# HAT's FCOS-EfficientNet-B0: EfficientNet-B0 in its quantization-friendly form (ReLU, no SE ==
# EfficientNet-Lite0) -> BiFPN (3 repeats, 64 ch, P3-P7) -> shared FCOS head (4x 3x3 convs, 64 ch) with
# SimOTA-style dynamic assignment and IoU-aware centerness.
num_classes = 80
model = dict(
    type='FCOS',
    # mean 128 kept although the Lite0 weights were trained with 127: on their ImageNet classifier 127 changes
    # no labelled COCO-crop prediction; see benchmarks/RESULTS.md "Input normalisation: 127 vs 128"
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[128.0, 128.0, 128.0],
                           std=[128.0, 128.0, 128.0], bgr_to_rgb=True, pad_size_divisor=128),
    backbone=dict(
        # stages 2/4/6: strides 8/16/32, 40/112/320 channels; ReLU6 as the ImageNet weights were trained
        type='EffNet', arch='lite0', out_indices=(2, 4, 6), frozen_stages=-1, norm_eval=False,
        norm_cfg=dict(type='BN', eps=1e-3, momentum=0.03), drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0')),
    neck=dict(
        type='BiFPNNeck', in_channels=[40, 112, 320], out_channels=64, num_outs=5, num_repeats=3,
        use_separable=True, norm_cfg=dict(type='BN', eps=1e-3, momentum=0.03),
        act_cfg=dict(type='ReLU')),
    bbox_head=dict(
        type='TunedFCOSHead', num_classes=num_classes, in_channels=64, feat_channels=64,
        stacked_convs=4, strides=[8, 16, 32, 64, 128], use_separable=False, assign_mode='dynamic',
        norm_cfg=dict(type='BN', eps=1e-3, momentum=0.03, requires_grad=True),
        loss_cls=dict(type='PyFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        # mmdet's FCOS init, except that box distances start at one stride instead of ~0: with ~0-sized
        # initial boxes every IoU in the dynamic cost is ~0, dynamic k collapses to 1 positive per object
        # and half the clamped distances get no gradient, so training from this cold start crawls.
        init_cfg=dict(type='Normal', layer='Conv2d', std=0.01,
                      override=[dict(type='Normal', name='conv_cls', std=0.01, bias_prob=0.01),
                                dict(type='Normal', name='conv_reg', std=0.01, bias=1.0)])),
    train_cfg=dict(
        # SimOTA-style dynamic assignment, no per-level regress ranges
        assigner=dict(type='MatchCostSimOTAAssigner', center_radius=2.5, candidate_topk=10,
                      cls_cost=dict(type='FocalLossCost', alpha=0.25, gamma=2.0, weight=1.0),
                      reg_cost=dict(type='IoUCost', iou_mode='giou', weight=2.0))),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.6), max_per_img=100))
