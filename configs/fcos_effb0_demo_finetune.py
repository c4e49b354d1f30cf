# A short float fine-tune of the demo detector from a trained checkpoint: the schedule of the QAT
# config (fcos_effb0_demo_qat.py inherits it and adds only the quantization), so that QAT's gain over
# the float checkpoint can be split into "100 more iterations" and "quantization-aware":
#   python tools/train.py configs/fcos_effb0_demo_finetune.py --cfg-options load_from=FLOAT_CKPT
# (benchmarks/bench_qat.py runs both; benchmarks/RESULTS.md, "Quantization-aware training").
_base_ = './fcos_effb0_demo.py'

# every weight comes from the float checkpoint (load_from), not from ImageNet
model = dict(backbone=dict(init_cfg=None))
load_from = None  # required: --cfg-options load_from=FLOAT_CKPT

max_iters = 100
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
# a fine-tune: constant small learning rate after a short warm-up
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=10, end=max_iters),
]
optim_wrapper = dict(optimizer=dict(lr=1e-4))
default_hooks = dict(checkpoint=dict(interval=max_iters))
