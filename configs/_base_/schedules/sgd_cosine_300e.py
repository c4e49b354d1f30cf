# HAT's fcos_efficientnetb0_mscoco schedule: SGD (Nesterov, momentum 0.937), lr 0.14 for 24 images/GPU
# on 8 GPUs (auto_scale_lr scales it to the real total batch), weight decay 4e-5 not on norm and bias,
# 2-epoch linear warm-up then cosine over 300 epochs, EMA of the weights.
max_epochs = 300
warmup_epochs = 2
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=warmup_epochs, end=max_epochs,
         T_max=max_epochs - warmup_epochs, eta_min_ratio=0.01, convert_to_iter_based=True),
]
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.14, momentum=0.937, nesterov=True, weight_decay=4e-5),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=35, norm_type=2))
auto_scale_lr = dict(enable=True, base_batch_size=192)
custom_hooks = [
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0002, update_buffers=True,
         priority=49),
]
# SyncBN when distributed on GPUs (without CUDA, adapt_cfg_to_machine in
# fcos_plugin/utils/setup_env.py drops it)
sync_bn = 'torch'
