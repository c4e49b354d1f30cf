"""Reading and checking images in worker processes, ahead of the writer but a bounded number of them.

The workers die with the packer (``PR_SET_PDEATHSIG`` on Linux, a parent watch elsewhere), ignore Ctrl-C
(the packer stops them itself) and close the packer's lock file descriptor.
"""
from __future__ import annotations

import ctypes
import os
import os.path as osp
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from .images import DecodedSize, check_image

#: images per task sent to a worker process, and tasks queued or running per worker at any time
CHUNK_IMAGES = 8
TASKS_PER_WORKER = 4


def _check_chunk(tasks: list[tuple[str, int, int]]) -> list[tuple]:
    return [check_image(*t) for t in tasks]


_PR_SET_PDEATHSIG = 1


def _exit_with_parent(parent_pid: int) -> None:
    """Make this worker die as soon as the packer does, even by ``kill -9`` (nothing else would end it:
    it waits forever on a task queue whose write end it inherited itself)."""
    if sys.platform.startswith('linux'):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != parent_pid:  # the packer died before the signal was armed
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


def _worker_init(parent_pid: int, close_fds: tuple[int, ...]) -> None:
    # Ctrl-C reaches the whole process group: the packer stops its workers itself, without their tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a forked worker holds copies of the packer's descriptors: the lock file's must not outlive it
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _exit_with_parent(parent_pid)


def max_images_in_flight(num_workers: int) -> int:
    """The most images read (or being read) by workers and not yet taken by the writer."""
    return (TASKS_PER_WORKER * num_workers + 1) * CHUNK_IMAGES


def checked_images(img_dir: str, images: list[dict], num_workers: int, close_fds: tuple[int, ...] = (),
                   pool_factory=ProcessPoolExecutor
                   ) -> Iterator[tuple[dict, bytes | None, tuple[str, str] | None, DecodedSize | None]]:
    """``(image record, bytes or None, (kind, problem) or None, decoded size or None)`` in the order of
    ``images`` (see :func:`check_image`).

    With workers, at most ``TASKS_PER_WORKER * num_workers`` tasks of ``CHUNK_IMAGES`` images are
    submitted ahead of the consumer (``Executor.map`` would submit all of them at once and hold every
    image's bytes in memory when the writer is slower than the readers).
    """
    tasks = [(osp.join(img_dir, im['file_name']), im['width'], im['height']) for im in images]
    if num_workers <= 1:
        for im, t in zip(images, tasks):
            yield (im, *check_image(*t))
        return
    starts = iter(range(0, len(tasks), CHUNK_IMAGES))
    with pool_factory(max_workers=num_workers, initializer=_worker_init,
                      initargs=(os.getpid(), tuple(close_fds))) as pool:
        pending: deque = deque()

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                pending.append((start, pool.submit(_check_chunk, tasks[start:start + CHUNK_IMAGES])))

        for _ in range(TASKS_PER_WORKER * num_workers):
            submit_next()
        while pending:
            start, future = pending.popleft()
            results = future.result()
            submit_next()  # keep the workers busy while this chunk is written
            for im, res in zip(images[start:start + CHUNK_IMAGES], results):
                yield (im, *res)
