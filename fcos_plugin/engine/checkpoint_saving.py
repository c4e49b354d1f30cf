"""Checkpoints written whole or not at all, and a best checkpoint that is never lost.

mmengine 0.10.7 writes a checkpoint (``save_checkpoint`` -> the file backend's ``put``) straight into
the target file: a full disk leaves a partial ``epoch_N.pth`` that looks like a checkpoint by name, and a
raw ``OSError``. Its ``CheckpointHook`` also removes the previous ``best_*.pth`` before it saves the new
one, so a save that fails (full disk, a kill, an I/O error) leaves no best checkpoint at all.

Two registered components answer this, selected by the shared runtime config
(``configs/_base_/default_runtime.py``: ``default_hooks.checkpoint.type='AtomicCheckpointHook'``);
nothing else in the process changes:

* :class:`AtomicLocalBackend`, the file backend ``'atomic_local'``: mmengine's ``LocalBackend`` whose
  ``put`` writes a temporary file beside the target, fsyncs it and renames it over the target
  (:func:`fcos_plugin.utils.write_atomic`); a failed write removes the temporary file and a full disk
  raises :class:`~fcos_plugin.utils.DiskFullError` ("no space left on DIR"), which the tools print
  without a traceback. ``CheckpointHook`` writes ``last_checkpoint`` only after ``put`` returned, so it
  never names a file that is not complete.
* :class:`AtomicCheckpointHook`: mmengine's ``CheckpointHook`` that saves through that backend (unless
  ``backend_args`` names another) and removes the previous best checkpoint only once the new one is
  saved; if the save fails, the previous one stays (and the run stops with the save's error).
"""
from __future__ import annotations

from mmdet.registry import HOOKS
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook

from ..utils.fileio import write_atomic

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend']


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """``LocalBackend`` whose binary writes are atomic (temporary file, fsync, rename)."""

    def put(self, obj: bytes, filepath) -> None:
        def write(tmp: str) -> None:
            with open(tmp, 'wb') as f:
                f.write(obj)
        write_atomic(str(filepath), write, size=len(obj))


class _KeepPreviousBest:
    """A file backend that reports the previous best checkpoint(s) as absent, so that mmengine neither
    removes them nor says it did; everything else is the backend's."""

    def __init__(self, backend, keep: set) -> None:
        self._backend = backend
        self._keep = keep

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def isfile(self, path) -> bool:
        return path not in self._keep and self._backend.isfile(path)

    def isdir(self, path) -> bool:
        return path not in self._keep and self._backend.isdir(path)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with atomic writes and a previous best checkpoint
    kept until the next is saved.

    Args:
        backend_args (dict, optional): as ``CheckpointHook``'s; default ``dict(backend='atomic_local')``
            (:class:`AtomicLocalBackend`). Another backend (e.g. a remote store) is used as given.
    """

    def __init__(self, *args, backend_args: dict | None = None, file_client_args: dict | None = None,
                 **kwargs) -> None:
        if backend_args is None and file_client_args is None:
            backend_args = dict(backend='atomic_local')
        super().__init__(*args, backend_args=backend_args, file_client_args=file_client_args, **kwargs)

    def _best_paths(self) -> set:
        """The paths of the current best checkpoints (one per key indicator)."""
        paths = (getattr(self, 'best_ckpt_path', None), *getattr(self, 'best_ckpt_path_dict', {}).values())
        return {p for p in paths if p}

    def _save_best_checkpoint(self, runner, metrics) -> None:
        backend = getattr(self, 'file_backend', None)
        previous = self._best_paths()
        if backend is None or not previous:
            return super()._save_best_checkpoint(runner, metrics)
        self.file_backend = _KeepPreviousBest(backend, previous)
        try:
            super()._save_best_checkpoint(runner, metrics)  # raises if the new best was not saved
        finally:
            self.file_backend = backend
        for path in previous - self._best_paths():  # replaced by a new best that is now saved
            if backend.isfile(path):
                backend.remove(path)
            elif backend.isdir(path):
                backend.rmtree(path)
            else:
                continue
            runner.logger.info(f'The previous best checkpoint {path} is removed (the new one is saved)')
