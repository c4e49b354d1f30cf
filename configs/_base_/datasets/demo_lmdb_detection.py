# The built-in synthetic demo data (tools/datasets/make_demo_dataset.py), packed like COCO:
#   data/demo/train_lmdb, data/demo/val_lmdb. CPU-sized: 320x320, small batches.
_base_ = './coco_lmdb_detection.py'

data_root = 'data/demo/'
input_size = (320, 320)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=input_size, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=input_size, allow_negative_crop=False),
    dict(type='RandomFlip', prob=0.5),
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
    batch_size=8, num_workers=2,
    dataset=dict(data_root=data_root, filter_cfg=dict(filter_empty_gt=True, min_size=0),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=2,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
