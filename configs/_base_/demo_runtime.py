# Runtime of the CPU demo configs: the shared runtime, logged and checkpointed by iteration (the demo
# schedule is counted in iterations), every run reproducible (same seed, deterministic kernels).
_base_ = './default_runtime.py'
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=150),
                     logger=dict(log_metric_by_epoch=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0, deterministic=True)
