"""Output files written whole or not at all, outputs that are kept unless ``--force``, and how a full disk
is named.

:func:`write_atomic` is the one atomic writer of the package: checkpoints (through
:class:`fcos_plugin.engine.AtomicLocalBackend`), JSON results, benchmark tables. :func:`no_space_left`
begins every full-disk message, its own and the COCO packer's, with sizes in MiB.
"""
from __future__ import annotations

import errno
import json
import os
import os.path as osp
import secrets
import stat
from collections.abc import Callable, Sequence

__all__ = ['DiskFullError', 'disk_space', 'fsync_path', 'is_disk_full', 'mib', 'no_space_left',
           'refuse_existing', 'write_atomic', 'write_json_atomic']


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


def mib(n: float) -> str:
    """``n`` bytes as messages show sizes: MiB (2**20 bytes), one decimal."""
    return f'{n / 2**20:.1f} MiB'


def disk_space(path: str) -> tuple[int, int] | None:
    """``(free, total)`` bytes of the file system holding ``path``, free counting what this process may
    write (root may also fill the blocks reserved for it); None if the file system cannot be asked."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize, st.f_blocks * st.f_frsize


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the file system is full or the quota spent: ``ENOSPC``/``EDQUOT``, or their
    text where a library passes on only the message (py-lmdb)."""
    if getattr(exc, 'errno', None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return 'No space left' in text or 'Disk quota' in text


def no_space_left(directory: str, doing: str, need: int | None = None) -> str:
    """``no space left on DIR (F MiB free of T MiB, N MiB needed) while DOING``: the start of every
    full-disk message, with the sizes that are known."""
    space = disk_space(directory)
    free = f'{mib(space[0])} free of {mib(space[1])}' if space is not None else ''
    needed = f'{mib(need)} needed' if need else ''
    sizes = ', '.join(filter(None, (free, needed)))
    return f'no space left on {directory}{f" ({sizes})" if sizes else ""} while {doing}'


def fsync_path(path: str) -> None:
    """``fsync`` a file or a directory (a directory: to make the renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and is_disk_full(e):
            kept = 'its previous version is unchanged' if osp.exists(target) else 'nothing was written'
            raise DiskFullError(e.errno, f'{no_space_left(directory, f"writing {name}", size)}: {kept}, '
                                f'the partial file was removed [{e.strerror or e}]') from None
        raise
    try:  # make the rename itself durable
        fsync_path(directory)
    except OSError:
        pass


def write_json_atomic(obj, path: str) -> None:
    """:func:`write_atomic` of ``json.dump(obj, indent=1)``."""
    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
    write_atomic(path, dump)
