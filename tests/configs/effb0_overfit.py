# Fit a few demo images with fcos_effb0_demo from Lite0 ImageNet weights (tests/test_models/test_learning.py).
_base_ = '../../configs/fcos_effb0_demo.py'
input_size = (352, 352)
fit_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=input_size, keep_ratio=True),
    dict(type='Pad', size=input_size, pad_val=dict(img=(128, 128, 128))),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor', 'flip', 'flip_direction')),
]
num_images = 3
train_dataloader = dict(batch_size=num_images, num_workers=0, persistent_workers=False,
                        dataset=dict(indices=num_images, pipeline=fit_pipeline))
val_dataloader = dict(batch_size=num_images, num_workers=0, persistent_workers=False,
                      dataset=dict(ann_file='train_lmdb', indices=num_images, pipeline=fit_pipeline))
test_dataloader = val_dataloader
max_epochs = 100
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10)]
optim_wrapper = dict(optimizer=dict(lr=0.01), clip_grad=dict(max_norm=10, norm_type=2))
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_epochs, save_best=None))
