"""On-disk format of a packed COCO split (``{split}_lmdb/``) and its reader.

An LMDB environment directory holding:

``__manifest__``   JSON: format name/version, split, counts, source JSON checksum, ``complete: true``.
                   Written last, in the final transaction: a target without it is never read.
``__categories__`` JSON list of COCO category dicts (``id``, ``name``, ``supercategory``), in source order.
``__index__``      ``.npz`` of column arrays (no pickle): one row per image, one row per annotation,
                   annotations grouped by image in source order (``ann_start``/``ann_count`` per image).
``img/<file_name>``  the original encoded image bytes, unchanged.
``seg/<image_id>``   (optional) JSON list of the image's segmentations, aligned with its annotations.

Everything a training, evaluation or browsing tool needs lives in the LMDB: the JSON is not needed after
packing. Columns use float64 for boxes and areas so that COCO evaluation from the LMDB equals evaluation
from the JSON to the last bit.
"""
from __future__ import annotations

import io
import json
import os
import os.path as osp
import threading
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np

FORMAT_NAME = 'fcos_plugin.coco_lmdb'
FORMAT_VERSION = 1

MANIFEST_KEY = b'__manifest__'
CATEGORIES_KEY = b'__categories__'
INDEX_KEY = b'__index__'
IMAGE_KEY_PREFIX = 'img/'
SEG_KEY_PREFIX = 'seg/'

#: URI scheme of images inside a packed LMDB: ``lmdb://<abs lmdb dir>::img/<file_name>``.
URI_SCHEME = 'lmdb'
URI_SEP = '::'

IMAGE_COLUMNS = ('image_id', 'width', 'height', 'file_name', 'ann_start', 'ann_count')
ANN_COLUMNS = ('ann_id', 'category_id', 'bbox', 'area', 'iscrowd')


class LmdbFormatError(ValueError):
    """Raised for a path that is not a complete packed LMDB of a compatible format."""


def image_key(file_name: str) -> bytes:
    return (IMAGE_KEY_PREFIX + file_name).encode()


def seg_key(image_id: int) -> bytes:
    return f'{SEG_KEY_PREFIX}{image_id}'.encode()


def image_uri(lmdb_path: str, file_name: str) -> str:
    """The ``img_path`` of an image: read through mmengine's fileio by :class:`LmdbImageBackend`.

    ``osp.basename`` of it is the original file name, so visualisation tools name their outputs as mmdet
    does for files.
    """
    return f'{URI_SCHEME}://{osp.abspath(lmdb_path)}{URI_SEP}{IMAGE_KEY_PREFIX}{file_name}'


def split_uri(uri: str) -> tuple[str, bytes]:
    """``lmdb://DB::KEY`` -> (DB, KEY bytes)."""
    body = str(uri)[len(URI_SCHEME) + 3:]
    db, sep, key = body.partition(URI_SEP)
    if not sep or not key:
        raise ValueError(f'{uri!r} is not an LMDB image URI of the form {URI_SCHEME}://DIR{URI_SEP}KEY')
    return db, key.encode()


def open_readonly(path: str) -> lmdb.Environment:
    """Open a packed LMDB for reading: read-only, no lock file, no readahead (random access)."""
    if not osp.isdir(path) or not osp.isfile(osp.join(path, 'data.mdb')):
        hint = ''
        if path.endswith('.json'):
            hint = (' It looks like a COCO annotation file: pack it first with '
                    'tools/datasets/mscoco_packer.py, or use mmdet\'s CocoDataset.')
        raise LmdbFormatError(f'{path!r} is not a packed LMDB (no data.mdb in it).{hint}')
    return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                     max_readers=512, subdir=True)


_ENVS: dict[tuple[int, str], tuple[lmdb.Environment, int]] = {}
_ENVS_LOCK = threading.Lock()


def shared_env(path: str) -> lmdb.Environment:
    """A per-process cached read-only environment (py-lmdb allows one per path and process).

    Keyed by PID so that a DataLoader worker forked after the dataset was built opens its own handle
    (LMDB handles must not cross ``fork``) lazily on first use. A handle whose pack was replaced on disk
    since it was opened is reopened.
    """
    path = osp.abspath(path)
    key = (os.getpid(), path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            env = open_readonly(path)
            entry = (env, os.stat(osp.join(path, 'data.mdb')).st_ino)
            _ENVS[key] = entry
    return entry[0]


def _drop_stale(path: str) -> None:
    key = (os.getpid(), osp.abspath(path))
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            return
        try:
            current = os.stat(osp.join(key[1], 'data.mdb')).st_ino
        except OSError:
            current = -1
        if current != entry[1]:
            entry[0].close()
            del _ENVS[key]


def _close_inherited_envs() -> None:
    """In a forked child: close the parent's handles (liblmdb refuses a second open of the same path
    in one process, and a handle must not be used across fork anyway)."""
    for key in list(_ENVS):
        if key[0] != os.getpid():
            env, _ = _ENVS.pop(key)
            try:
                env.close()
            except lmdb.Error:
                pass


os.register_at_fork(after_in_child=_close_inherited_envs)


def read_manifest(txn: lmdb.Transaction, path: str) -> dict:
    raw = txn.get(MANIFEST_KEY)
    if raw is None:
        raise LmdbFormatError(
            f'{path!r} has no manifest: it is not a complete pack (an interrupted or foreign LMDB). '
            'Rerun tools/datasets/mscoco_packer.py to (re)build it.')
    manifest = json.loads(raw)
    if manifest.get('format') != FORMAT_NAME:
        raise LmdbFormatError(f'{path!r} is an LMDB of format {manifest.get("format")!r}, '
                              f'not {FORMAT_NAME!r}.')
    if manifest.get('format_version') != FORMAT_VERSION:
        raise LmdbFormatError(
            f'{path!r} was packed with format version {manifest.get("format_version")}, this '
            f'fcos_plugin reads version {FORMAT_VERSION}. Repack it with this version\'s '
            'tools/datasets/mscoco_packer.py.')
    if not manifest.get('complete'):
        raise LmdbFormatError(f'{path!r} is marked incomplete; repack it.')
    return manifest


def encode_index(columns: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **columns)
    return buf.getvalue()


@dataclass
class PackedCoco:
    """Everything but the image bytes of a packed split, as compact column arrays."""

    path: str
    manifest: dict
    categories: list[dict]
    columns: dict[str, np.ndarray]

    @property
    def num_images(self) -> int:
        return len(self.columns['image_id'])

    def ann_image_rows(self) -> np.ndarray:
        """(num_annotations,) image row of each annotation (annotations are grouped by image)."""
        return np.repeat(np.arange(self.num_images), self.columns['ann_count'])

    def coco_dataset_dict(self) -> dict[str, Any]:
        """The split as a COCO-format dict (``images``, ``annotations``, ``categories``).

        Used as evaluation ground truth: crowd regions, original areas and boxes included.
        """
        c = self.columns
        images = [dict(id=int(i), file_name=f.decode(), width=int(w), height=int(h))
                  for i, f, w, h in zip(c['image_id'], c['file_name'], c['width'], c['height'])]
        img_ids = c['image_id'][self.ann_image_rows()]
        annotations = [
            dict(id=int(a), image_id=int(im), category_id=int(cat), bbox=[float(v) for v in box],
                 area=float(ar), iscrowd=int(cr))
            for a, im, cat, box, ar, cr in zip(c['ann_id'], img_ids, c['category_id'], c['bbox'],
                                               c['area'], c['iscrowd'])]
        return dict(images=images, annotations=annotations, categories=[dict(c) for c in self.categories])


def load_packed(path: str) -> PackedCoco:
    """Read the manifest, categories and index of a packed split (not the images)."""
    # Read through this process's cached handle if there is one; otherwise open, read and close, so the
    # index pages do not stay mapped (and resident) in a process that only builds the dataset.
    _drop_stale(path)
    cached = _ENVS.get((os.getpid(), osp.abspath(path)))
    env = cached[0] if cached else open_readonly(path)
    try:
        with env.begin(write=False) as txn:
            manifest = read_manifest(txn, path)
            categories = json.loads(txn.get(CATEGORIES_KEY))
            with np.load(io.BytesIO(txn.get(INDEX_KEY)), allow_pickle=False) as npz:
                columns = {k: npz[k] for k in npz.files}
    finally:
        if not cached:
            env.close()
    missing = set(IMAGE_COLUMNS + ANN_COLUMNS) - set(columns)
    if missing:
        raise LmdbFormatError(f'{path!r}: index lacks columns {sorted(missing)}; repack it.')
    return PackedCoco(path=path, manifest=manifest, categories=categories, columns=columns)
