# configs/fcos_r18_demo.py trained by epochs, as the COCO recipe is (the demo schedule counts
# iterations): the compat and round-trip tests exercise epoch-based loops, checkpoints and resume.
_base_ = '../../configs/fcos_r18_demo.py'
train_cfg = dict(_delete_=True, type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
default_hooks = dict(checkpoint=dict(by_epoch=True, interval=1))
log_processor = dict(by_epoch=True)
