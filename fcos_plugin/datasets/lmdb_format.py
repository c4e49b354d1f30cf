"""On-disk format of a packed COCO split (``{split}_lmdb/``) and its reader.

An LMDB environment directory holding:

``__manifest__``   JSON: format name/version, split, counts, source JSON checksum, ``complete: true``.
                   Written last, in the final transaction: a target without it is never read.
``__categories__`` JSON list of COCO category dicts (``id``, ``name``, ``supercategory``), in source order.
``__index__``      ``.npz`` of column arrays (no pickle): one row per image, one row per annotation,
                   annotations grouped by image in source order (``ann_start``/``ann_count`` per image).
``img/<file_name>``  the original encoded image bytes, unchanged.
``seg/<image_id>``   (optional) JSON list of the image's segmentations, aligned with its annotations.
``img#<file_name>``, ``seg#<image_id>``  (format version 2) the checksum record of ``img/...``, ``seg/...``:
                   ``<Iq`` little-endian CRC32 of the record's value and the image id it belongs to. The
                   manifest holds the CRC32 of ``__index__`` and ``__categories__``.

Every image and segmentation record read through :func:`read_record` (``LmdbImageBackend``,
``LmdbCocoDataset``) is checked against its checksum: a mismatch raises :class:`DamagedPackError` naming
the pack, the key and the image id. Version 1 packs (no checksums) are still read, with a one-line note.
``data.mdb`` is checked against the size its own LMDB meta pages record before it is mapped (a truncated
file would kill the process with SIGBUS on the first read). ``tools/datasets/verify_pack.py`` checks a
whole pack.

Everything a training, evaluation or browsing tool needs lives in the LMDB: the JSON is not needed after
packing. Columns use float64 for boxes and areas so that COCO evaluation from the LMDB equals evaluation
from the JSON to the last bit.
"""
from __future__ import annotations

import io
import json
import logging
import os
import os.path as osp
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np

FORMAT_NAME = 'fcos_plugin.coco_lmdb'
#: 2: CRC32 checksum records (``img#``/``seg#`` keys) and the index/categories CRC32 in the manifest
FORMAT_VERSION = 2
#: the versions this reader opens (1: no checksums, read with a note)
READABLE_VERSIONS = (1, 2)
CHECKSUM = 'crc32'

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

#: checksum record value: CRC32 of the record's value, image id
_CHECKSUM_RECORD = struct.Struct('<Iq')
_MDB_MAGIC = 0xBEEFC0DE

logger = logging.getLogger(__name__)


def _advice(path: str, verify: bool = False) -> str:
    """What to do about a damaged pack, appended to the errors that name one."""
    fix = 'repack the split (tools/datasets/mscoco_packer.py ... --overwrite) or restore it from a copy.'
    if verify:
        return f'tools/datasets/verify_pack.py {osp.abspath(path)} lists every damaged record; {fix}'
    return fix[0].upper() + fix[1:]


class LmdbFormatError(ValueError):
    """Raised for a path that is not a complete packed LMDB of a compatible format."""


class DamagedPackError(LmdbFormatError):
    """A pack whose bytes changed after it was written: a truncated or unreadable ``data.mdb``, or a record
    whose checksum does not match. ``problem`` is the finding alone (without advice); ``path``, ``key`` and
    ``image_id`` say where, when known. Takes one positional argument, so that torch's DataLoader can
    re-raise it in the main process when a worker hits it."""

    def __init__(self, message: str, *, problem: str | None = None, path: str | None = None,
                 key: str | None = None, image_id: int | None = None):
        super().__init__(message)
        self.problem = problem if problem is not None else message
        self.path, self.key, self.image_id = path, key, image_id


def _pack_error(path: str, problem: str, key: str | None = None) -> DamagedPackError:
    """The error for a damaged pack as a whole (a damaged record: :func:`_record_error`)."""
    return DamagedPackError(f'damaged pack {path}: {problem}. {_advice(path)}', problem=problem, path=path,
                            key=key)

def image_key(file_name: str) -> bytes:
    return (IMAGE_KEY_PREFIX + file_name).encode()


def seg_key(image_id: int) -> bytes:
    return f'{SEG_KEY_PREFIX}{image_id}'.encode()


def pack_error_message(exc: BaseException) -> str:
    """The message of a pack error for a command line: a DataLoader re-raises a worker's error with the
    worker's traceback as its message; keep the error's own line and say where it happened."""
    text = str(exc)
    if 'Original Traceback' in text:
        where = text.partition('\n')[0].rstrip('.').replace('Caught ', 'raised ')
        last = text.rstrip().splitlines()[-1]
        head, sep, message = last.partition(': ')
        if sep and head.endswith(type(exc).__name__):
            return f'{message} ({where})'
    return text


def checksum_key(key: bytes) -> bytes:
    """The key of a record's checksum record: ``img/x`` -> ``img#x``, ``seg/7`` -> ``seg#7`` (as long as the
    record's key, so every key the packer accepts has one)."""
    if key[3:4] != b'/':
        raise ValueError(f'{key!r} is not a checksummed record key (img/... or seg/...)')
    return key[:3] + b'#' + key[4:]


def is_checksum_key(key: bytes) -> bool:
    return key[3:4] == b'#' and key[:3] in (IMAGE_KEY_PREFIX[:3].encode(), SEG_KEY_PREFIX[:3].encode())


def checksum_record(key: bytes, value: bytes, image_id: int) -> tuple[bytes, bytes]:
    """``(key, value)`` of the checksum record of the record ``key: value`` of image ``image_id``."""
    return checksum_key(key), _CHECKSUM_RECORD.pack(zlib.crc32(value), image_id)


def checksum_problem(value: bytes, stored: bytes | None) -> tuple[str | None, int | None]:
    """``(problem or None, image id recorded with the checksum or None)`` of a record's value."""
    if stored is None:
        return 'its checksum record is missing', None
    if len(stored) != _CHECKSUM_RECORD.size:
        return f'its checksum record is {len(stored)} bytes, not {_CHECKSUM_RECORD.size}', None
    crc, image_id = _CHECKSUM_RECORD.unpack(stored)
    actual = zlib.crc32(value)
    if actual != crc:
        return (f'CRC32 mismatch: the {len(value)} bytes read have CRC32 {actual:08x}, the pack recorded '
                f'{crc:08x} when it was written'), image_id
    return None, image_id


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


def data_file_problem(data_path: str) -> str | None:
    """Compare ``data.mdb``'s size with the size its newest LMDB meta page records, without mapping it:
    liblmdb maps a truncated file beyond its end and the first read kills the process with SIGBUS."""
    try:
        size = osp.getsize(data_path)
        with open(data_path, 'rb') as f:
            metas = [f.read(160)]
            if size == 0:
                return f'{data_path} is empty (0 bytes): truncated, or never written'
            if len(metas[0]) < 160 or struct.unpack_from('<I', metas[0], 16)[0] != _MDB_MAGIC:
                return None  # not an LMDB of the layout known here: liblmdb judges it
            psize = struct.unpack_from('<I', metas[0], 40)[0]
            f.seek(psize)
            metas.append(f.read(160))
    except OSError as e:
        return f'cannot read {data_path}: {e.strerror}'
    txnid, last_pg = max(struct.unpack_from('<QQ', m, 136)[::-1] for m in metas
                         if len(m) == 160 and struct.unpack_from('<I', m, 16)[0] == _MDB_MAGIC)
    need = (last_pg + 1) * psize
    if size < need:
        return f'{data_path} is truncated: {size} bytes, its LMDB metadata needs {need}'
    return None


def _check_data_file(path: str) -> None:
    problem = data_file_problem(osp.join(path, 'data.mdb'))
    if problem is not None:
        raise _pack_error(path, problem)


def open_readonly(path: str) -> lmdb.Environment:
    """Open a packed LMDB for reading: read-only, no lock file, no readahead (random access).

    ``data.mdb`` is checked against its LMDB metadata first (never mapped when truncated), and liblmdb's
    own refusals are errors naming the file."""
    data = osp.join(path, 'data.mdb')
    if not osp.isdir(path) or not osp.isfile(data):
        if path.endswith('.json'):
            hint = (' It looks like a COCO annotation file: pack it first with '
                    'tools/datasets/mscoco_packer.py, or use mmdet\'s CocoDataset.')
        else:
            name = osp.basename(osp.normpath(path))
            split = name[:-len('_lmdb')] if name.endswith('_lmdb') else 'SPLIT'
            target = osp.dirname(osp.abspath(path))
            hint = (f' Pack the split first (tools/datasets/mscoco_packer.py --src-data-dir COCO_DIR '
                    f'--target-data-dir {target} --split-name {split} --pack-type lmdb; '
                    'tools/datasets/make_demo_dataset.py for the demo data), or point data_root/ann_file at '
                    'an existing pack.')
        what = 'does not exist' if not osp.exists(path) else 'is not a packed LMDB (no data.mdb in it)'
        raise LmdbFormatError(f'{path!r} {what}.{hint}')
    _check_data_file(path)
    try:
        return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=512, subdir=True)
    except (lmdb.InvalidError, lmdb.CorruptedError, lmdb.VersionMismatchError, lmdb.PageNotFoundError) as e:
        problem = f'{data} is not a readable LMDB file ({e})'
        raise _pack_error(path, problem) from None
    except lmdb.Error as e:
        raise LmdbFormatError(f'cannot open the pack {path}: {e}') from None


#: (pid, pack) -> (environment, inode and size of data.mdb when it was opened, records checksummed?)
_ENVS: dict[tuple[int, str], tuple[lmdb.Environment, int, int, bool]] = {}
_ENVS_LOCK = threading.Lock()


def _shared(path: str) -> tuple[lmdb.Environment, bool]:
    """(this process's cached read-only environment of ``path``, whether its records carry checksums).

    Raises :class:`DamagedPackError` when the ``data.mdb`` it maps has shrunk since it was opened (cut in
    place while in use): liblmdb would read the pages past the new end and the process would die of
    SIGBUS. One ``stat`` per call; a pack replaced by another file (a new inode) is not this case: the
    mapped file lives on until :func:`load_packed` reopens the new one."""
    path = osp.abspath(path)
    key = (os.getpid(), path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            env = open_readonly(path)
            try:
                with env.begin(write=False) as txn:
                    raw = txn.get(MANIFEST_KEY)
                manifest = json.loads(raw) if raw is not None else {}
            except (lmdb.Error, ValueError) as e:
                env.close()
                problem = f'its manifest cannot be read ({type(e).__name__}: {e})'
                raise _pack_error(path, problem) from None
            checked = isinstance(manifest, dict) and manifest.get('checksum') == CHECKSUM
            st = os.stat(osp.join(path, 'data.mdb'))
            entry = (env, st.st_ino, st.st_size, checked)
            _ENVS[key] = entry
    env, ino, size, checked = entry
    try:
        st = os.stat(osp.join(path, 'data.mdb'))
    except OSError:
        st = None  # removed: the mapped file lives on (as when replaced)
    if st is not None and st.st_ino == ino and st.st_size < size:
        data = osp.join(path, 'data.mdb')
        problem = f'{data} is truncated: {st.st_size} bytes now, {size} when it was opened (cut while in use)'
        raise _pack_error(path, problem)
    return env, checked


def shared_env(path: str) -> lmdb.Environment:
    """This process's cached read-only environment of the pack ``path`` (liblmdb allows one per path and
    process), opened on first use.

    A forked child -- a DataLoader worker forked after the dataset was built -- closes the handles it
    inherited (``os.register_at_fork``; LMDB handles must not cross ``fork``) and opens its own here; the
    cache is keyed by PID, so a child never picks up its parent's. A pack replaced on disk since its handle
    was opened is reopened the next time :func:`load_packed` reads it (when a dataset is built), not on
    every record read.
    """
    return _shared(path)[0]


def read_record(path: str, key: bytes) -> bytes | None:
    """The value of ``key`` in the pack ``path`` (None if absent), checked against its checksum record.

    Raises :class:`DamagedPackError` naming the pack, the key and the image id when the value's CRC32 is
    not the one written by the packer (or its checksum record is missing), and when liblmdb finds the
    pages holding it corrupt. Packs of format version 1 have no checksums: their values are returned as
    they are."""
    env, checked = _shared(path)
    try:
        with env.begin(write=False, buffers=False) as txn:
            value = txn.get(key)
            stored = txn.get(checksum_key(key)) if checked and value is not None else None
    except lmdb.Error as e:
        problem = f'liblmdb cannot read it ({e})'
        raise _record_error(path, key, problem, _image_id_of(path, key)) from None
    if value is not None and checked:
        problem, image_id = checksum_problem(value, stored)
        if problem is not None:
            raise _record_error(path, key, problem, image_id if image_id is not None
                                else _image_id_of(path, key))
    return value


def _record_error(path: str, key: bytes, problem: str, image_id: int | None) -> DamagedPackError:
    name, path = key.decode(errors='replace'), osp.abspath(path)
    iid = f'image id {image_id}' if image_id is not None else 'image id unknown'
    return DamagedPackError(f'damaged record in the pack {path}: key {name!r} ({iid}): {problem}. '
                            f'{_advice(path, verify=True)}', problem=problem, path=path, key=name,
                            image_id=image_id)


def _image_id_of(path: str, key: bytes) -> int | None:
    """The image id of a record from its key or the pack's index (only on the error path)."""
    try:
        if key.startswith(SEG_KEY_PREFIX.encode()):
            return int(key[len(SEG_KEY_PREFIX):])
        if key.startswith(IMAGE_KEY_PREFIX.encode()):
            columns = load_packed(path, note_unchecked=False).columns
            rows = np.flatnonzero(columns['file_name'] == key[len(IMAGE_KEY_PREFIX):])
            return int(columns['image_id'][rows[0]]) if len(rows) else None
    except Exception:  # noqa: BLE001  (a damaged index: the id stays unknown, the error is raised anyway)
        return None
    return None


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
            env = _ENVS.pop(key)[0]
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
    if manifest.get('format_version') not in READABLE_VERSIONS:
        raise LmdbFormatError(
            f'{path!r} was packed with format version {manifest.get("format_version")}, this '
            f'fcos_plugin reads versions {", ".join(map(str, READABLE_VERSIONS))}. Repack it with this '
            'version\'s tools/datasets/mscoco_packer.py.')
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


_NOTED: set[tuple[int, str]] = set()


def _note_unchecked(path: str, manifest: dict) -> None:
    """One log line per pack and process: a version 1 pack is read without checksums."""
    key = (os.getpid(), osp.abspath(path))
    if key not in _NOTED:
        _NOTED.add(key)
        logger.warning(f'note: {osp.abspath(path)} is a format version {manifest.get("format_version")} '
                       'pack: its records carry no checksums, so damaged image bytes go undetected; repack '
                       'it with tools/datasets/mscoco_packer.py --overwrite to add them.')


def load_packed(path: str, note_unchecked: bool = True) -> PackedCoco:
    """Read the manifest, categories and index of a packed split (not the images).

    The index and categories are checked against the CRC32 the manifest records for them (version 2), a
    version 1 pack gets a one-line note (unless ``note_unchecked`` is false) that it carries no checksums.
    """
    # Read through this process's cached handle if there is one; otherwise open, read and close, so the
    # index pages do not stay mapped (and resident) in a process that only builds the dataset.
    _drop_stale(path)
    cached = _ENVS.get((os.getpid(), osp.abspath(path)))
    if cached:
        _check_data_file(path)  # truncated in place since it was opened: never touch its pages
    env = cached[0] if cached else open_readonly(path)
    try:
        with env.begin(write=False) as txn:
            manifest = read_manifest(txn, path)
            raw_categories, raw_index = txn.get(CATEGORIES_KEY), txn.get(INDEX_KEY)
    except lmdb.Error as e:
        problem = f'liblmdb cannot read its manifest, categories or index ({e})'
        raise _pack_error(path, problem) from None
    finally:
        if not cached:
            env.close()
    for what, key, raw in (('categories', CATEGORIES_KEY, raw_categories), ('index', INDEX_KEY, raw_index)):
        want = manifest.get(f'{what}_crc32')
        problem = None
        if raw is None:
            problem = f'its {what} record ({key.decode()}) is missing'
        elif want is not None and zlib.crc32(raw) != want:
            problem = (f'its {what} record ({key.decode()}) has CRC32 {zlib.crc32(raw):08x}, the pack '
                       f'recorded {want:08x} when it was written')
        if problem is not None:
            raise _pack_error(path, problem, key=key.decode())
    categories = json.loads(raw_categories)
    with np.load(io.BytesIO(raw_index), allow_pickle=False) as npz:
        columns = {k: npz[k] for k in npz.files}
    missing = set(IMAGE_COLUMNS + ANN_COLUMNS) - set(columns)
    if missing:
        raise LmdbFormatError(f'{path!r}: index lacks columns {sorted(missing)}; repack it.')
    if note_unchecked and manifest.get('checksum') != CHECKSUM:
        _note_unchecked(path, manifest)
    return PackedCoco(path=path, manifest=manifest, categories=categories, columns=columns)
