# Runtime shared by every fcos_plugin config: mmdet's defaults plus the plugin import.
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['fcos_plugin'], allow_failed_imports=False)

# mmengine's Runner that loads mmengine checkpoints weights-only on torch 2.14 (refused or corrupt files
# named in one line) and starts distributed runs on CPU-only machines (fcos_plugin.engine.runner)
runner_type = 'CompatRunner'

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    # mmengine's CheckpointHook, writing each checkpoint atomically (a full disk leaves the previous one
    # and last_checkpoint intact) and removing the previous best only once the new one is saved
    checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3, save_best='auto'),
    # the first NaN/Inf loss term, parameter or BN statistic stops training before it is saved
    # (fcos_plugin.engine.hooks; check_weights=False checks the loss only)
    check_loss=dict(type='StopOnNonFiniteLossHook', interval=1),
    # a head's num_classes that disagrees with the dataset's classes stops train/test at the start
    check_classes=dict(type='NumClassesMatchDatasetHook'))
