"""MMEngine extensions of the plugin: hooks (mmdet's ``HOOKS``), the iteration loop (mmdet's
``LOOPS``), the runner and DDP wrapper (mmengine's ``RUNNERS`` / ``MODEL_WRAPPERS``), the ``atomic_local``
file backend, and weights-only loading of mmengine checkpoints. Configs select them; importing changes
nothing else."""
from .checkpoint_loading import (
    CorruptCheckpointError,
    UnsafeCheckpointError,
    checkpoint_format_problem,
    safe_checkpoint_loading,
)
from .checkpoint_saving import AtomicCheckpointHook, AtomicLocalBackend
from .hooks import (
    ChannelsLastHook,
    CheckpointFitsModelHook,
    CheckpointMismatchError,
    NonFiniteLossError,
    NumClassesMatchDatasetHook,
    NumClassesMismatchError,
    StopOnNonFiniteLossHook,
    all_finite,
    checkpoint_fit,
    shape_mismatches,
)
from .loops import DataEpochIterator, DataEpochIterBasedTrainLoop
from .runner import CompatRunner, CPUCompatDistributedDataParallel

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'CompatRunner', 'CorruptCheckpointError',
           'CPUCompatDistributedDataParallel', 'DataEpochIterator', 'DataEpochIterBasedTrainLoop',
           'UnsafeCheckpointError', 'checkpoint_format_problem',
           'safe_checkpoint_loading',
           'ChannelsLastHook', 'CheckpointFitsModelHook', 'CheckpointMismatchError', 'NonFiniteLossError',
           'NumClassesMatchDatasetHook', 'NumClassesMismatchError', 'StopOnNonFiniteLossHook', 'all_finite',
           'checkpoint_fit', 'shape_mismatches']
