"""What a failed write into the target directory is called: a full disk (also when liblmdb reports it only
as ``Input/output error``), a read-only or foreign target, or any other failure -- each with what to do."""
from __future__ import annotations

import errno

import lmdb

from ...utils.fileio import disk_space, is_disk_full, no_space_left
from .report import PackError
from .writer import BATCH_BYTES

#: an LMDB error with less free space than this (two write batches) is taken for a full disk: liblmdb
#: reports a commit cut short by one as ``mdb_txn_commit: Input/output error``
LMDB_LOW_SPACE = 2 * BATCH_BYTES + (1 << 20)


def write_failure(exc: OSError | lmdb.Error, target_dir: str, doing: str, need: int = 0,
                  after: str = '') -> PackError:
    """The error to show for a failed write into ``target_dir`` while ``doing`` something; ``need`` is the
    size of the whole pack, ``after`` what was left (both for the message)."""
    code = getattr(exc, 'errno', None)
    text = str(exc) if isinstance(exc, lmdb.Error) or not getattr(exc, 'strerror', None) else exc.strerror
    full = is_disk_full(exc)
    if not full and isinstance(exc, lmdb.Error):
        space = disk_space(target_dir)
        full = space is not None and space[0] < LMDB_LOW_SPACE
    after = f' {after}' if after else ''
    if full:
        return PackError(f'{no_space_left(target_dir, doing, need)} [{text}].{after} Make room or choose '
                         'another --target-data-dir, then rerun the same command.')
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return PackError(f'cannot write to {target_dir} while {doing}: {text}.{after} Choose a writable '
                         f'--target-data-dir (or make {target_dir} writable), then rerun.')
    return PackError(f'writing into {target_dir} failed while {doing}: {text}.{after} Fix the cause and '
                     'rerun the same command.')
