"""Output files written whole or not at all, and outputs that are kept unless ``--force``.

:func:`write_atomic` is the one atomic writer of the package: checkpoints (through
:mod:`fcos_plugin.compat`'s ``LocalBackend.put``), JSON results, benchmark tables.
"""
from __future__ import annotations

import errno
import json
import os
import os.path as osp
import secrets
import stat
from collections.abc import Callable, Sequence

__all__ = ['DiskFullError', 'refuse_existing', 'write_atomic', 'write_json_atomic']


class DiskFullError(OSError):
    """A write ran out of space (``ENOSPC``/``EDQUOT``); the target was left as it was and the partial
    temporary file removed. ``str()`` is the message for the user."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def refuse_existing(paths: Sequence[str], force: bool, error: type[Exception] = FileExistsError) -> None:
    """Raise ``error`` naming the ``paths`` that exist, unless ``force``."""
    existing = [p for p in paths if osp.exists(p)]
    if existing and not force:
        raise error(f'{", ".join(existing)} already exist(s); use --force to overwrite')


def _mb(n: float) -> str:
    return f'{n / 2**20:.1f} MB'


def write_atomic(path: str, write: Callable[[str], object], size: int | None = None) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it onto ``path``, so that ``path``
    holds either its previous content or all of the new one.

    The temporary file is in the same directory (same file system: the rename is atomic) and has the
    same suffix (for writers that choose the format by it); it is fsync'd before the rename, and the
    directory after. ``path`` gets the mode ``open(path, 'w')`` would give it (the umask for a new file,
    the old mode for an existing one); a symbolic link is written through, as ``open`` does. A failed
    write removes the temporary file.

    Args:
        path: the file to write.
        write: writes the whole content to the path it is given.
        size: bytes to be written, for the message when the disk is full.

    Raises:
        DiskFullError: no space left (message names the directory and the sizes; nothing partial is left).
        OSError: any other failure, also without a partial file left.
    """
    target = osp.realpath(os.fspath(path))
    directory, name = osp.split(target)
    os.makedirs(directory, exist_ok=True)
    stem, suffix = osp.splitext(name)
    tmp = osp.join(directory, f'.{stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}')
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask, as open() does
    try:
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        except FileNotFoundError:
            pass
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                st = os.statvfs(directory)
                free = f'{_mb(st.f_bavail * st.f_frsize)} free of {_mb(st.f_blocks * st.f_frsize)}'
            except OSError:
                free = ''
            needed = f'{_mb(size)} needed' if size is not None else ''
            sizes = ', '.join(filter(None, (free, needed)))
            kept = 'its previous version is unchanged' if osp.exists(target) else 'nothing was written'
            raise DiskFullError(e.errno, f'no space left on {directory}{f" ({sizes})" if sizes else ""} '
                                f'while writing {name}: {kept}, the partial file was removed '
                                f'[{e.strerror}]') from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def write_json_atomic(obj, path: str) -> None:
    """:func:`write_atomic` of ``json.dump(obj, indent=1)``."""
    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
    write_atomic(path, dump)
