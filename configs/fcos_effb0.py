# FCOS-EfficientNet-B0 (HAT's fcos_efficientnetb0_mscoco) on MS-COCO packed into LMDB, 512x512.
# Backbone: EfficientNet-B0 as Lite0 (ReLU, no SE) from ImageNet weights; BiFPN 3x64; FCOS head 4x64 3x3
# convs, SimOTA assignment, IoU-aware centerness, score sqrt(cls*ctr). 300 epochs SGD + cosine + EMA.
_base_ = [
    './_base_/models/fcos_effb0_bifpn.py',
    './_base_/datasets/coco_lmdb_detection.py',
    './_base_/schedules/sgd_cosine_300e.py',
    './_base_/default_runtime.py',
]
# Drawing threshold of tools/test.py --show-dir. The score is sqrt(cls x centerness): mmdet's default
# 0.3 means cls x centerness >= 0.09 and draws the weak other-class guesses focal loss leaves at each
# object (benchmarks/RESULTS.md, "Demo recipe"); 0.5 shows each object once, with its name.
default_hooks = dict(visualization=dict(score_thr=0.5))
