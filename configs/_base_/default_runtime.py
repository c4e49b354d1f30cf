# Runtime shared by every fcos_plugin config: mmdet's defaults plus the plugin import.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['fcos_plugin'], allow_failed_imports=False)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'),
    # the first NaN/Inf loss term, parameter or BN statistic stops training before it is saved
    # (fcos_plugin.engine.hooks; check_weights=False checks the loss only)
    check_loss=dict(type='StopOnNonFiniteLossHook', interval=1),
    # a head's num_classes that disagrees with the dataset's classes stops train/test at the start
    check_classes=dict(type='NumClassesMatchDatasetHook'))
