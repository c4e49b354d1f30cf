# Short CPU schedule for the built-in demo data. Counted in iterations, because its budget is CPU
# minutes: 10.9 minutes of training on 2 cores, validations included (benchmarks/RESULTS.md, "The main
# command, timed").
# AdamW (decoupled weight decay 0.05, none on norm/bias) with a short linear warm-up and a cosine
# decay to 5%: from a random BiFPN/head it learns several times faster per iteration than the SGD
# schedule of the COCO recipe, which is tuned for 300 epochs (see RESULTS.md for the comparison).
max_iters = 600
val_interval = 150
# DataEpochIterBasedTrainLoop (fcos_plugin.engine.loops): mmengine's IterBasedTrainLoop, same batches,
# without its "Reach the end of the dataloader" warning and 2 s sleep each time the data starts again.
train_cfg = dict(type='DataEpochIterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=max_iters, T_max=max_iters,
         eta_min_ratio=0.05),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.002, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)
