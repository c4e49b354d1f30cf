"""Output files written whole or not at all, and outputs that are kept unless ``--force``."""
from __future__ import annotations

import json
import os
import os.path as osp
import tempfile
from collections.abc import Callable, Sequence


def refuse_existing(paths: Sequence[str], force: bool, error: type[Exception] = FileExistsError) -> None:
    """Raise ``error`` naming the ``paths`` that exist, unless ``force``."""
    existing = [p for p in paths if osp.exists(p)]
    if existing and not force:
        raise error(f'{", ".join(existing)} already exist(s); use --force to overwrite')


def write_atomic(path: str, write: Callable[[str], object]) -> None:
    """``write(tmp)`` a temporary file next to ``path`` (same suffix), then rename it onto ``path``:
    readers never see a partial file, and a failed write leaves no temporary file behind."""
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix=osp.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def write_json_atomic(obj, path: str) -> None:
    """:func:`write_atomic` of ``json.dump(obj, indent=1)``."""
    def dump(tmp: str) -> None:
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1)
    write_atomic(path, dump)
