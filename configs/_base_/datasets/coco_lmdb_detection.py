# COCO 2017 detection read from LMDB packs written by tools/datasets/mscoco_packer.py:
#   data/mscoco/train_lmdb, data/mscoco/val_lmdb
# Augmentation of HAT's fcos_efficientnetb0_mscoco at 512x512.
dataset_type = 'LmdbCocoDataset'
data_root = 'data/mscoco/'
input_size = (512, 512)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=input_size, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=input_size, allow_negative_crop=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='HSVJitter', hgain=0.015, sgain=0.7, vgain=0.4),
    dict(type='Pad', size=input_size, pad_val=dict(img=(128, 128, 128))),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=input_size, keep_ratio=True),
    dict(type='Pad', size=input_size, pad_val=dict(img=(128, 128, 128))),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

train_dataloader = dict(
    batch_size=24,
    num_workers=8,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='train_lmdb',
        filter_cfg=dict(filter_empty_gt=True, min_size=32),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='val_lmdb',
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(type='LmdbCocoMetric', metric='bbox', format_only=False)
test_evaluator = val_evaluator
