"""The target directory of a pack: the split lock, the state of an existing pack, the leftovers of killed
runs, and the atomic swap of a finished pack into place.

* one packer per split and target directory at a time (``{target}/{split}_lmdb.lock``, ``flock``); a
  second one stops with a message instead of touching the first one's temporary directory;
* leftovers of killed runs (temporary ``.{split}_lmdb.tmp-*`` and superseded ``.{split}_lmdb.old-*``
  directories) are removed at the start of the next run, under the lock;
* a pack is built in a temporary sibling directory and renamed into place only when complete, so readers
  see the old pack or the new one, never a part.
"""
from __future__ import annotations

import fcntl
import os
import os.path as osp
import shutil
import uuid

import lmdb

from ...utils.fileio import fsync_path
from ..lmdb_format import DamagedPackError, LmdbFormatError, data_file_problem, load_packed
from .failures import write_failure
from .options import PackOptions, work_prefix
from .report import PackError


def make_target_dir(target_dir: str) -> None:
    """Create ``target_dir`` if it is not there; :class:`PackError` if it cannot be or is a file."""
    if osp.exists(target_dir) and not osp.isdir(target_dir):
        raise PackError(f'the target directory {target_dir} is a file, not a directory; it was left as it '
                        'is. Choose another --target-data-dir.')
    try:
        os.makedirs(target_dir, exist_ok=True)
    except OSError as e:
        raise write_failure(e, target_dir, 'creating the target directory') from None


def new_work_dir(target_dir: str, split: str, kind: str) -> str:
    """A new name for a temporary (``kind='tmp'``) or superseded (``'old'``) pack directory."""
    return osp.join(target_dir, f'{work_prefix(split)}{kind}-{uuid.uuid4().hex[:8]}')


def clear_the_way(opts: PackOptions) -> None:
    """Under the lock, before a pack: remove what killed runs left, then stop unless the pack's place is
    free or ``opts.overwrite`` lets a pack there be replaced."""
    final = opts.final
    try:
        clean_leftovers(opts.target_dir, opts.split, final, opts.log)
    except OSError as e:
        raise write_failure(e, opts.target_dir, 'removing what an earlier, killed run left') from None
    state, detail = pack_state(final)
    if state == 'file':
        raise PackError(f'{final} is a file, not a pack; it was left as it is (--overwrite replaces packs '
                        'only). Move or remove it, or choose another --target-data-dir.')
    if state != 'absent' and not opts.overwrite:
        what = {'complete': 'a complete pack', 'broken': f'a damaged pack: {detail}'}.get(
            state, 'something that is not a complete pack')
        raise PackError(f'{final} already exists ({what}); not overwriting it, it was left as it is. '
                        'Pass --overwrite to replace it, or choose another --target-data-dir.')


class SplitLock:
    """``{target}/{split}_lmdb.lock``, held with ``flock`` for a whole pack so that two packers of one split
    exclude each other (and neither removes the other's temporary directory); removed on release."""

    def __init__(self, target_dir: str, split: str):
        self.target_dir, self.split = target_dir, split
        self.path = osp.join(target_dir, f'{split}_lmdb.lock')
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise write_failure(e, self.target_dir, f'creating the lock file {self.path}') from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors='replace').strip()
                os.close(fd)
                pid = f', pid {holder}' if holder.isdigit() else ''
                raise PackError(f'another packer is writing split {self.split!r} into {self.target_dir} (it '
                                f'holds {self.path}{pid}). Wait for it to finish, or stop it and rerun; two '
                                'packs of one split cannot be written at once.') from None
            except OSError as e:
                os.close(fd)
                raise write_failure(e, self.target_dir, f'locking {self.path}') from None
            # the previous holder removes the file when it is done: lock the file that is there now
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f'{os.getpid()}\n'.encode())
        except OSError:  # only informational (the pid in the message of a second packer)
            pass

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still held: a packer that opened it meanwhile will retry
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def pack_state(path: str) -> tuple[str, str]:
    """('absent' | 'complete' | 'foreign' | 'broken' | 'file', detail) of a would-be pack directory."""
    if not osp.lexists(path):
        return 'absent', ''
    if not osp.isdir(path):
        return 'file', ''
    if not osp.isfile(osp.join(path, 'data.mdb')):
        return 'foreign', 'no data.mdb in it'
    problem = data_file_problem(osp.join(path, 'data.mdb'))
    if problem is not None:
        return 'broken', problem
    try:
        load_packed(path, note_unchecked=False)
        return 'complete', ''
    except DamagedPackError as e:
        return 'broken', e.problem
    except LmdbFormatError as e:
        return 'foreign', str(e)
    except lmdb.Error as e:
        return 'broken', f'LMDB cannot read it: {e}'
    except Exception as e:  # a manifest, category list or index that does not parse
        return 'broken', f'its contents do not parse: {type(e).__name__}: {e}'


def _remove(path: str) -> None:
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def clean_leftovers(target_dir: str, split: str, final: str, log) -> None:
    """Remove what killed runs left (under the lock, so none of it belongs to a running packer).

    A kill between the two renames of an ``--overwrite`` leaves no pack in place but the previous one in
    ``.old-*``: it is put back first, so nothing that was good is lost.
    """
    prefix = work_prefix(split)
    names = sorted(n for n in os.listdir(target_dir) if n.startswith(prefix))
    if not osp.lexists(final):
        olds = [n for n in names if n.startswith(prefix + 'old-')
                and pack_state(osp.join(target_dir, n))[0] == 'complete']
        if olds:
            newest = max(olds, key=lambda n: os.stat(osp.join(target_dir, n)).st_mtime)
            os.rename(osp.join(target_dir, newest), final)
            names.remove(newest)
            log(f'restored {final} from {newest}, left by an interrupted --overwrite')
    for name in names:
        _remove(osp.join(target_dir, name))


def swap_into_place(tmp: str, final: str, old: str) -> None:
    """Rename ``tmp`` to ``final``, atomically for readers: they see the old pack or the new one."""
    target_dir = osp.dirname(final) or '.'
    if osp.lexists(final):
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)
            raise
        fsync_path(target_dir)
        _remove(old)
    else:
        os.rename(tmp, final)
    fsync_path(target_dir)
