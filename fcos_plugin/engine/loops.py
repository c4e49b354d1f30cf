"""An iteration-based training loop that goes round its data the way mmengine's does, without the
warning and the pause.

mmengine's ``IterBasedTrainLoop`` draws batches through ``_InfiniteDataloaderIterator``: when the
dataloader runs out it logs a WARNING ("Reach the end of the dataloader ... use InfiniteSampler"),
calls ``sampler.set_epoch(n)``, sleeps 2 seconds ("prevent possible deadlock", a workaround its
maintainers could not reproduce the need for: open-mmlab/mmcv#1912) and starts the dataloader again.
On the demo (300 images, batch 8, 600 iterations) that is 15 warnings and 30 s of sleep per run.

mmdet's answer, ``sampler=dict(type='InfiniteSampler')``, draws a different stream of batches: one
generator for all epochs instead of ``seed + epoch`` per epoch, and ``AspectRatioBatchSampler``'s
leftover images join the next epoch's instead of forming a short batch. Every seeded number would
change. :class:`DataEpochIterBasedTrainLoop` keeps mmengine's stream exactly -- the same
``set_epoch`` calls, the same restarts, so the same batches, augmentations and weights -- logs one
INFO line per data epoch, and does not sleep. A config that prefers ``InfiniteSampler`` can use it
too: the data then never runs out and the loop never restarts it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

from mmdet.registry import LOOPS
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop


class DataEpochIterator:
    """Endless batches from ``dataloader``: at its end, ``set_epoch(n)`` on the sampler and start
    again -- mmengine's ``_InfiniteDataloaderIterator`` less the warning and the sleep.

    ``iterator`` is the dataloader iterator already started (mmengine's loop starts one in its
    constructor; starting a second would reset the workers after they had drawn random numbers for
    batches that are then thrown away, and the augmentations would no longer be mmengine's)."""

    def __init__(self, dataloader, iterator=None) -> None:
        self._dataloader = dataloader
        self._iterator = iter(dataloader) if iterator is None else iterator
        self._epoch = 0

    def __iter__(self):
        return self

    def _sampler(self):
        sampler = getattr(self._dataloader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            return sampler
        batch_sampler = getattr(self._dataloader, 'batch_sampler', None)
        sampler = getattr(batch_sampler, 'sampler', None)
        return sampler if hasattr(sampler, 'set_epoch') else None

    def __next__(self) -> Sequence[dict]:
        try:
            return next(self._iterator)
        except StopIteration:
            pass
        self._epoch += 1
        sampler = self._sampler()
        if sampler is not None:
            sampler.set_epoch(self._epoch)
        print_log(f'Training data: epoch {self._epoch + 1} of the data begins'
                  + (f' ({type(sampler).__name__}.set_epoch({self._epoch}))' if sampler is not None else ''),
                  logger='current', level=logging.INFO)
        self._iterator = iter(self._dataloader)
        return next(self._iterator)


@LOOPS.register_module()
class DataEpochIterBasedTrainLoop(IterBasedTrainLoop):
    """``IterBasedTrainLoop`` with :class:`DataEpochIterator`: the same batches as mmengine's loop,
    an INFO line instead of a WARNING when the data starts again, no 2-second sleep. Select it with
    ``train_cfg = dict(type='DataEpochIterBasedTrainLoop', max_iters=..., val_interval=...)``."""

    def __init__(self, runner, dataloader, max_iters: int, val_begin: int = 1, val_interval: int = 1000,
                 dynamic_intervals: list[tuple[int, int]] | None = None) -> None:
        super().__init__(runner, dataloader, max_iters, val_begin=val_begin, val_interval=val_interval,
                         dynamic_intervals=dynamic_intervals)
        # Adopt the iterator mmengine's constructor started rather than starting another.
        started = getattr(self.dataloader_iterator, '_iterator', None)
        self.dataloader_iterator = DataEpochIterator(self.dataloader, started)
