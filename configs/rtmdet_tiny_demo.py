# mmdet's own RTMDet-tiny (rtmdet_tiny_8xb32-300e_coco.py: CSPNeXt + PAFPN + shared-conv SepBN head,
# dynamic soft-label assignment, QFL, AdamW 0.004, EMA) on the built-in demo data, for the
# same-budget comparison of benchmarks/bench_demo_peers.py. Changed from mmdet's config only in the
# number of classes, the input size and data pipeline (the demo's, as every compared model gets) and
# the schedule (the demo's iterations, warm-up and cosine decay; RTMDet's own optimizer and EMA kept).
import os.path as osp

import mmdet
from mmengine.config import Config

_base_ = [
    './_base_/datasets/demo_lmdb_detection.py',
    './_base_/schedules/demo_cpu.py',
    './_base_/demo_runtime.py',
]
_rtmdet = Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', 'rtmdet',
                                   'rtmdet_tiny_8xb32-300e_coco.py'))
model = _rtmdet.model.to_dict()
model['bbox_head']['num_classes'] = 6
model['backbone']['init_cfg'] = None  # from scratch, as every compared model (no download here)
optim_wrapper = dict(_delete_=True, **_rtmdet.optim_wrapper.to_dict())
custom_hooks = [dict(h) for h in _rtmdet.custom_hooks if h['type'] == 'EMAHook']
del _rtmdet, Config
