# CPU-sized FCOS-EfficientNet-B0 on the built-in demo data (the main command's default): the model of
# fcos_effb0.py (Lite0 ImageNet weights, BiFPN, tuned FCOS head) with 6 classes at 320x320, trained
# for 600 iterations of 8 images (schedules/demo_cpu.py: AdamW): 10.9 minutes of training on 2 CPU cores,
# validations included (benchmarks/RESULTS.md, "The main command, timed").
_base_ = [
    './_base_/models/fcos_effb0_bifpn.py',
    './_base_/datasets/demo_lmdb_detection.py',
    './_base_/schedules/demo_cpu.py',
    './_base_/demo_runtime.py',
]
# short runs: BN running statistics must follow within tens of iterations (PyTorch's default momentum)
bn = dict(type='BN', eps=1e-3, momentum=0.1)
model = dict(
    # 320 is a multiple of 32; padding to 128 (the COCO config's 512 already is one) would train on
    # 384x384, 44% more pixels for nothing
    data_preprocessor=dict(pad_size_divisor=32),
    # stem and the two stride-2/4 stages keep their ImageNet weights (edges, colours): their backward
    # pass at 160x160 and 80x80 is a third of an iteration's time on CPU (bench_demo_speed.py)
    backbone=dict(norm_cfg=bn, frozen_stages=2), neck=dict(norm_cfg=bn),
    bbox_head=dict(num_classes=6, norm_cfg=dict(bn, requires_grad=True)))
# NHWC convolutions: 1.49x faster per iteration on CPU (benchmarks/bench_demo_speed.py; benchmarks/RESULTS.md,
# "Demo recipe: where a training iteration's time goes")
custom_hooks = [dict(type='ChannelsLastHook')]
# Drawing threshold of tools/test.py --show-dir. The score is sqrt(cls x centerness): mmdet's default
# 0.3 means cls x centerness >= 0.09 and draws the weak other-class guesses focal loss leaves at each
# object (benchmarks/RESULTS.md, "Demo recipe"); 0.5 shows each object once, with its name.
default_hooks = dict(visualization=dict(score_thr=0.5))
