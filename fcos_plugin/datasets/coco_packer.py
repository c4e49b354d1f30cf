"""Pack a COCO split (``instances_{split}2017.json`` + ``{split}2017/``) into a self-contained LMDB.

The command-line front end is ``tools/datasets/mscoco_packer.py``. Guarantees:

* the original encoded image bytes are stored unchanged (no re-encoding), each record with a CRC32
  checksum record that every read checks (see :mod:`.lmdb_format`);
* every problem in the input (missing/undecodable/truncated image, size mismatch, bad box, unknown
  category, duplicate id, ...) is reported with the image id and file, written to
  ``{target}/{split}_pack_report.json``, and only the affected records are skipped;
  ``strict=True`` turns any problem into a failure that writes nothing;
* sizes are checked as training decodes the image (cv2, EXIF orientation applied: a phone photo stored
  400x200 with orientation 6 is 200x400); images that carry an orientation are listed in the report;
* a file name that leads outside the source directory (``..``, absolute, a symlink out) is a problem of
  its record unless ``allow_outside_src``; a file named by several records is packed once, for the first;
* the pack is built in a temporary sibling directory and renamed into place only when complete, so a
  ``kill -9`` at any moment never leaves a target that a reader takes for complete, and rerunning the same
  command succeeds; a complete target is never overwritten unless asked;
* the LMDB map grows as needed (no ``MDB_MAP_FULL``);
* one packer per split and target directory at a time (``{target}/{split}_lmdb.lock``, ``flock``); a
  second one stops with a message instead of touching the first one's temporary directory; leftovers of
  killed runs (temporary ``.{split}_lmdb.tmp-*`` and superseded ``.{split}_lmdb.old-*`` directories) are
  removed at the start of the next run, under the lock;
* worker processes die with the packer (``PR_SET_PDEATHSIG`` on Linux, a parent watch elsewhere) and at
  most :func:`max_images_in_flight` images are read ahead of the writer;
* a full disk, a read-only or non-directory target, a damaged existing pack and an over-long key are
  errors naming the directory, file or record and what to do, never raw tracebacks.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import io
import json
import math
import os
import os.path as osp
import shutil
import signal
import sys
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import lmdb
import numpy as np
from PIL import Image

from ..utils import write_json_atomic
from .lmdb_format import (
    CATEGORIES_KEY,
    CHECKSUM,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_KEY_PREFIX,
    INDEX_KEY,
    MANIFEST_KEY,
    DamagedPackError,
    LmdbFormatError,
    checksum_record,
    data_file_problem,
    encode_index,
    image_key,
    load_packed,
    seg_key,
)

#: a transaction is committed after this many images or this many image bytes, whichever comes first
BATCH_IMAGES = 256
BATCH_BYTES = 16 << 20
#: images per task sent to a worker process, and tasks queued or running per worker at any time
CHUNK_IMAGES = 8
TASKS_PER_WORKER = 4
#: LMDB's largest key (``mdb_env_get_maxkeysize`` of the default build); image keys are ``img/<file_name>``
MAX_KEY_BYTES = 511
#: boxes may stick out of the image by this many pixels (annotation rounding) before they count as bad
DEFAULT_BBOX_TOLERANCE = 1.0


class PackError(RuntimeError):
    """A problem that stops the pack (bad arguments, unreadable JSON, strict-mode problems)."""


@dataclass
class Problem:
    kind: str
    message: str
    image_id: int | None = None
    file_name: str | None = None
    ann_id: int | None = None
    action: str = 'skipped'

    def line(self) -> str:
        where = []
        if self.image_id is not None:
            where.append(f'image {self.image_id}' + (f' ({self.file_name})' if self.file_name else ''))
        if self.ann_id is not None:
            where.append(f'annotation {self.ann_id}')
        prefix = ', '.join(where) or 'dataset'
        return f'{prefix}: {self.message}; {self.action}'

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class PackResult:
    target: str
    num_images: int
    num_annotations: int
    num_crowd: int
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    bytes_written: int = 0
    report_path: str | None = None
    #: images whose EXIF orientation training applies (``image_id``, ``file_name``, ``orientation``,
    #: ``stored_size``, ``decoded_size``, ``packed``), in source order
    exif_oriented: list[dict] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.num_images / max(self.seconds, 1e-9)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


def split_paths(src_dir: str, split: str) -> tuple[str, str]:
    return (osp.join(src_dir, 'annotations', f'instances_{split}2017.json'),
            osp.join(src_dir, f'{split}2017'))


def target_path(target_dir: str, split: str) -> str:
    return osp.join(target_dir, f'{split}_lmdb')


def report_path(target_dir: str, split: str) -> str:
    return osp.join(target_dir, f'{split}_pack_report.json')


# ----------------------------------------------------------------------------------------------------
# JSON-level validation
# ----------------------------------------------------------------------------------------------------
def _load_json(ann_path: str) -> tuple[dict, str]:
    try:
        with open(ann_path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise PackError(f'cannot read annotation file {ann_path}: {e.strerror}') from None
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f' at line {e.lineno}, column {e.colno}' if isinstance(e, json.JSONDecodeError) else ''
        raise PackError(f'{ann_path} is not valid JSON{where}: {e.msg if hasattr(e, "msg") else e}. '
                        'Fix or re-download the annotation file.') from None
    if not isinstance(data, dict):
        raise PackError(f'{ann_path}: expected a COCO object with "images", "annotations" and '
                        f'"categories", got a JSON {type(data).__name__}.')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            raise PackError(f'{ann_path}: missing or malformed "{key}" list; this is not a COCO '
                            'instances file.')
    return data, sha256


def _as_int(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else None


def _file_name_problem(fname: str) -> tuple[str, str] | None:
    """(kind, message) when ``fname`` cannot be an LMDB image key (``img/<file_name>``), else None."""
    if '\0' in fname:
        return 'bad_file_name', 'file name contains a NUL character; fix "file_name" in the JSON'
    try:
        n = len(image_key(fname))
    except UnicodeEncodeError:
        return 'bad_file_name', ('file name is not valid Unicode text (it cannot be encoded as UTF-8); '
                                 'fix "file_name" in the JSON')
    if n > MAX_KEY_BYTES:
        return 'file_name_too_long', (
            f'file name is {n - len(IMAGE_KEY_PREFIX)} bytes in UTF-8, LMDB keys hold at most '
            f'{MAX_KEY_BYTES - len(IMAGE_KEY_PREFIX)} ({MAX_KEY_BYTES} with the "{IMAGE_KEY_PREFIX}" '
            'prefix); shorten the file name (and its "file_name" in the JSON)')
    return None


def _source_roots(src_dir: str, img_dir: str) -> tuple[str, ...]:
    """The real directories image files may lie in: ``--src-data-dir`` and the split's image directory
    (which may itself be a symlink to elsewhere, as ``train2017 -> /datasets/coco/train2017`` often is)."""
    return tuple(dict.fromkeys(osp.realpath(d) for d in (src_dir, img_dir)))


def _real_path(img_dir: str, fname: str, dir_cache: dict[str, str]) -> str:
    """``osp.realpath(osp.join(img_dir, fname))`` with each directory resolved once: one ``lstat`` per
    record instead of one per path component (10 instead of 36 us per record, measured on 2 busy cores)."""
    head, tail = osp.split(osp.join(img_dir, fname))
    real_head = dir_cache.get(head)
    if real_head is None:
        real_head = dir_cache[head] = osp.realpath(head)
    path = osp.join(real_head, tail)
    return osp.realpath(path) if tail in ('', '.', '..') or osp.islink(path) else path


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _validate_records(data: dict, bbox_tolerance: float, problems: list[Problem], src_dir: str,
                      img_dir: str, allow_outside_src: bool = False):
    """Return (categories, images, anns_by_image) keeping only valid records, in source order.

    An image file must lie inside ``src_dir`` or ``img_dir`` once symlinks are resolved, unless
    ``allow_outside_src``; of several records of one file, the first valid one is kept.
    """
    categories, cat_ids = [], set()
    for cat in data['categories']:
        cid = _as_int(cat.get('id')) if isinstance(cat, dict) else None
        if cid is None or not isinstance(cat.get('name'), str):
            problems.append(Problem('bad_category', f'malformed category record {cat!r}'))
            continue
        if cid in cat_ids:
            problems.append(Problem('duplicate_category_id', f'category id {cid} appears twice'))
            continue
        cat_ids.add(cid)
        categories.append(dict(id=cid, name=cat['name'], supercategory=cat.get('supercategory', '')))

    id_count = Counter(_as_int(im.get('id')) for im in data['images'] if isinstance(im, dict))
    roots = _source_roots(src_dir, img_dir)
    outside = f'outside {src_dir}' if len(roots) == 1 or _inside(roots[1], roots[:1]) else \
        f'outside both {src_dir} and {img_dir}'
    first_of_file: dict[str, int] = {}  # real path -> id of the first valid record of that file
    dir_cache: dict[str, str] = {}
    images = {}
    for im in data['images']:
        iid = _as_int(im.get('id')) if isinstance(im, dict) else None
        fname = im.get('file_name') if isinstance(im, dict) else None
        w = _as_int(im.get('width')) if isinstance(im, dict) else None
        h = _as_int(im.get('height')) if isinstance(im, dict) else None
        if iid is None or not isinstance(fname, str) or not fname or w is None or h is None \
                or w <= 0 or h <= 0:
            problems.append(Problem('bad_image_record', f'malformed image record {im!r}',
                                    image_id=iid, file_name=fname if isinstance(fname, str) else None))
            continue
        name_problem = _file_name_problem(fname)
        if name_problem is not None:
            problems.append(Problem(name_problem[0], name_problem[1], iid, fname,
                                    action='skipped with its annotations'))
            continue
        if id_count[iid] > 1:
            problems.append(Problem('duplicate_image_id',
                                    f'image id {iid} is used by {id_count[iid]} image records; '
                                    'its annotations cannot be attributed', iid, fname,
                                    action='skipped with its annotations'))
            continue
        path = _real_path(img_dir, fname, dir_cache)  # symlinks and '..' resolved
        if not allow_outside_src and not _inside(path, roots):
            problems.append(Problem(
                'file_outside_src',
                f'the file name leads outside the source directory (to {path}, {outside}); it was not '
                'opened. Fix "file_name" in the JSON (it is relative '
                f'to {osp.basename(img_dir)}/), or pass --allow-outside-src if files outside '
                '--src-data-dir (e.g. symlinks into another directory) are meant to be packed',
                iid, fname, action='skipped with its annotations'))
            continue
        first = first_of_file.get(path)
        if first is not None:
            same = '' if images[first]['file_name'] == fname else f' ({images[first]["file_name"]})'
            problems.append(Problem(
                'duplicate_file_name',
                f'the same file as image {first}{same}, which is kept: a file can be one image record only; '
                'remove this later record from the JSON (moving its annotations to image '
                f'{first} if they belong there) or point it at its own file', iid, fname,
                action='skipped with its annotations'))
            continue
        first_of_file[path] = iid
        images[iid] = dict(id=iid, file_name=fname, width=w, height=h)

    ann_id_count = Counter(_as_int(a.get('id')) for a in data['annotations'] if isinstance(a, dict))
    anns_by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in data['annotations']:
        if not isinstance(ann, dict):
            problems.append(Problem('bad_annotation', f'malformed annotation record {ann!r}'))
            continue
        aid, iid = _as_int(ann.get('id')), _as_int(ann.get('image_id'))
        img = images.get(iid)
        fname = img['file_name'] if img else None

        def bad(kind: str, msg: str) -> None:
            problems.append(Problem(kind, msg, iid, fname, aid))

        if aid is None:
            bad('bad_annotation', 'annotation without an integer id')
            continue
        if ann_id_count[aid] > 1:
            bad('duplicate_annotation_id', f'annotation id {aid} is used {ann_id_count[aid]} times')
            continue
        if iid not in images:
            if iid not in id_count:
                bad('unknown_image_id', f'annotation refers to image id {iid} which is not in "images"')
            continue  # annotations of skipped images are accounted for with their image
        cid = _as_int(ann.get('category_id'))
        if cid not in cat_ids:
            bad('unknown_category_id', f'unknown category id {ann.get("category_id")!r}')
            continue
        box = ann.get('bbox')
        if not (isinstance(box, list) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                        for v in box)):
            bad('bad_bbox', f'malformed bbox {box!r}')
            continue
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            bad('empty_bbox', f'bbox {box} has width/height <= 0')
            continue
        tol = bbox_tolerance
        if x < -tol or y < -tol or x + w > img['width'] + tol or y + h > img['height'] + tol:
            bad('bbox_outside_image',
                f'bbox {box} lies outside the {img["width"]}x{img["height"]} image')
            continue
        area = ann.get('area', w * h)
        if not isinstance(area, (int, float)) or isinstance(area, bool) or not math.isfinite(area):
            bad('bad_area', f'malformed area {area!r}')
            continue
        anns_by_image[iid].append(dict(id=aid, category_id=cid, bbox=[x, y, w, h], area=float(area),
                                       iscrowd=int(bool(ann.get('iscrowd', 0))),
                                       segmentation=ann.get('segmentation')))
    return categories, list(images.values()), anns_by_image


# ----------------------------------------------------------------------------------------------------
# image checks (run in worker processes)
# ----------------------------------------------------------------------------------------------------
#: EXIF orientation tag. ``cv2.imdecode`` with ``IMREAD_COLOR`` -- how ``mmcv.imfrombytes`` and
#: ``LoadImageFromFile`` decode by default, hence how training sees an image -- applies it: values 2-8 flip
#: and/or rotate the pixels, and 5-8 swap width and height. Sizes are checked in that displayed frame.
EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset((5, 6, 7, 8))
#: formats whose EXIF orientation is taken from their EXIF block as cv2's JPEG decoder does; for any other
#: format carrying an orientation (rare) cv2 itself decodes the image once to learn the displayed size
_JPEG_FORMATS = frozenset(('JPEG', 'MPO'))


@dataclass(frozen=True)
class DecodedSize:
    """An image's size as stored and as decoded for training (EXIF orientation applied)."""
    stored: tuple[int, int]  # (width, height) of the encoded pixels
    orientation: int  # EXIF orientation, 1 (none) to 8
    decoded: tuple[int, int]  # (width, height) after the orientation, what training sees


def _jpeg_orientation(im: Image.Image) -> int:
    raw = im.info.get('exif')
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = exif.get(EXIF_ORIENTATION)
    except Exception:  # an EXIF block PIL cannot parse is taken as no orientation
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _cv2_orientation(data: bytes, orientation: int) -> tuple[int, tuple[int, int]] | None:
    """``(orientation cv2 applies, decoded size)`` for a non-JPEG image whose metadata names an
    orientation: whether cv2 honours it there depends on its version, so ask it (two decodes, rare)."""
    import cv2
    buf = np.frombuffer(data, np.uint8)
    shown = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if shown is None:
        return None
    raw = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    applied = raw is None or raw.shape != shown.shape or not np.array_equal(raw, shown)
    return (orientation if applied else 1), (shown.shape[1], shown.shape[0])


def decoded_size(data: bytes) -> DecodedSize:
    """Decode ``data`` (at reduced DCT scale for JPEG: the whole entropy-coded stream is still read, so
    truncation and corruption raise, at a fraction of a full decode's cost) and return its size as stored
    and as training decodes it. Raises whatever PIL raises for data that does not decode."""
    with Image.open(io.BytesIO(data)) as im:
        stored, fmt = im.size, im.format
        im.draft('RGB', (max(1, stored[0] // 8), max(1, stored[1] // 8)))
        im.load()
        if fmt in _JPEG_FORMATS:
            orientation = _jpeg_orientation(im)
        else:
            try:
                value = im.getexif().get(EXIF_ORIENTATION)
            except Exception:
                value = None
            orientation = value if isinstance(value, int) and 2 <= value <= 8 else 1
    if orientation == 1:
        return DecodedSize(stored, 1, stored)
    if fmt in _JPEG_FORMATS:
        return DecodedSize(stored, orientation, stored[::-1] if orientation in _SWAPS_AXES else stored)
    from_cv2 = _cv2_orientation(data, orientation)
    if from_cv2 is not None:
        return DecodedSize(stored, *from_cv2)
    return DecodedSize(stored, orientation, stored[::-1] if orientation in _SWAPS_AXES else stored)


def _size_problem(size: DecodedSize, width: int, height: int, source: str) -> tuple[str, str] | None:
    """``(kind, message)`` when an image decoded as ``size`` does not fit the record's width/height."""
    if size.decoded == (width, height):
        return None
    (sw, sh), (dw, dh), o = size.stored, size.decoded, size.orientation
    if size.stored == (width, height):  # only possible when the orientation swaps the axes
        return 'exif_rotated_size', (
            f'image is stored as {sw}x{sh} but its EXIF orientation {o} rotates it to {dw}x{dh}, which is '
            f'how training decodes it; {source}\'s width/height must be the displayed size {dw}x{dh}, '
            'with the boxes drawn on the displayed image. Fix the record (and its boxes if they were drawn '
            'on the unrotated pixels), or remove the orientation tag from the file if they were')
    if o != 1:
        return 'bad_image', (f'image is {dw}x{dh} as decoded (stored {sw}x{sh}, EXIF orientation {o}) but '
                             f'{source} says {width}x{height}')
    return 'bad_image', f'image is {sw}x{sh} but {source} says {width}x{height}'


def _image_problem(data: bytes, width: int, height: int,
                   source: str) -> tuple[tuple[str, str] | None, DecodedSize | None]:
    try:
        size = decoded_size(data)
    except Exception as e:  # PIL raises many types for corrupt data
        return ('bad_image', f'cannot decode image ({type(e).__name__}: {e})'), None
    return _size_problem(size, width, height, source), size


def check_image(path: str, width: int, height: int
                ) -> tuple[bytes | None, tuple[str, str] | None, DecodedSize | None]:
    """Read an image file and decode it fully: ``(bytes, None, size)`` or ``(None, (kind, problem),
    size or None)``; sizes are compared in the frame training decodes the image in (EXIF orientation)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None, ('bad_image', 'image file is missing'), None
    except OSError as e:
        return None, ('bad_image', f'cannot read image file ({e.strerror})'), None
    except ValueError as e:  # a path Python cannot pass to the OS
        return None, ('bad_image', f'cannot open image file ({e})'), None
    problem, size = _image_problem(data, width, height, 'the JSON')
    return (None if problem else data), problem, size


def decode_problem(data: bytes, width: int, height: int, source: str = 'the JSON') -> str | None:
    """None if ``data`` decodes to a ``width`` x ``height`` image (as training decodes it, EXIF
    orientation applied), else what is wrong with it."""
    problem, _ = _image_problem(data, width, height, source)
    return None if problem is None else problem[1]


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


def _checked_images(img_dir: str, images: list[dict], num_workers: int, close_fds: tuple[int, ...] = (),
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


# ----------------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------------
class _GrowingWriter:
    """Writes batches into an LMDB, doubling the map size whenever it is full."""

    def __init__(self, path: str, map_size: int):
        self.env = lmdb.open(path, map_size=map_size, subdir=True, lock=True, sync=False,
                             metasync=False, meminit=False, map_async=False)
        self.map_size = map_size

    def put_many(self, items: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in items:
                        txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.map_size *= 2
                self.env.set_mapsize(self.map_size)
            except lmdb.BadValsizeError:  # keys are checked when the JSON is read; this is a safety net
                bad = [k for k, _ in items if not k or len(k) > MAX_KEY_BYTES]
                raise PackError(f'LMDB refused the key {bad[0] if bad else items[0][0]!r} (keys hold 1 to '
                                f'{MAX_KEY_BYTES} bytes); nothing was written.') from None

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()


# ----------------------------------------------------------------------------------------------------
# the target directory: lock, leftovers of killed runs, the existing pack, failed writes
# ----------------------------------------------------------------------------------------------------
def _mb(n: int) -> str:
    return f'{n / 1e6:.1f} MB'


def _available_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _write_failure(exc: OSError | lmdb.Error, target_dir: str, doing: str, need: int = 0,
                   after: str = '') -> PackError:
    """The error to show for a failed write into ``target_dir``: a full disk is named as such (liblmdb
    reports a write cut short by it as ``mdb_txn_commit: Input/output error``), a read-only or foreign
    target too."""
    code = getattr(exc, 'errno', None)
    text = str(exc) if isinstance(exc, lmdb.Error) or not getattr(exc, 'strerror', None) else exc.strerror
    free = _available_bytes(target_dir)
    full = code in (errno.ENOSPC, errno.EDQUOT) or 'No space left' in text or 'Disk quota' in text
    if not full and isinstance(exc, lmdb.Error) and free is not None:
        full = free < 2 * BATCH_BYTES + (1 << 20)
    after = f' {after}' if after else ''
    if full:
        room = f' ({_mb(free)} free)' if free is not None else ''
        want = f' for about {_mb(need)}' if need else ''
        return PackError(f'no space left on {target_dir}{room} while {doing} [{text}].{after} '
                         f'Make room{want} or choose another --target-data-dir, then rerun the same command.')
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return PackError(f'cannot write to {target_dir} while {doing}: {text}.{after} Choose a writable '
                         f'--target-data-dir (or make {target_dir} writable), then rerun.')
    return PackError(f'writing into {target_dir} failed while {doing}: {text}.{after} Fix the cause and '
                     'rerun the same command.')


class _SplitLock:
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
                raise _write_failure(e, self.target_dir, f'creating the lock file {self.path}') from None
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
                raise _write_failure(e, self.target_dir, f'locking {self.path}') from None
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


def _pack_state(path: str) -> tuple[str, str]:
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


def _clean_leftovers(target_dir: str, split: str, final: str, log) -> None:
    """Remove what killed runs left (under the lock, so none of it belongs to a running packer).

    A kill between the two renames of an ``--overwrite`` leaves no pack in place but the previous one in
    ``.old-*``: it is put back first, so nothing that was good is lost.
    """
    prefix = f'.{split}_lmdb.'
    names = sorted(n for n in os.listdir(target_dir) if n.startswith(prefix))
    if not osp.lexists(final):
        olds = [n for n in names if n.startswith(prefix + 'old-')
                and _pack_state(osp.join(target_dir, n))[0] == 'complete']
        if olds:
            newest = max(olds, key=lambda n: os.stat(osp.join(target_dir, n)).st_mtime)
            os.rename(osp.join(target_dir, newest), final)
            names.remove(newest)
            log(f'restored {final} from {newest}, left by an interrupted --overwrite')
    for name in names:
        _remove(osp.join(target_dir, name))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: str, final: str, old: str) -> None:
    """Rename ``tmp`` to ``final``, atomically for readers: they see the old pack or the new one."""
    target_dir = osp.dirname(final) or '.'
    if osp.lexists(final):
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)
            raise
        _fsync_dir(target_dir)
        _remove(old)
    else:
        os.rename(tmp, final)
    _fsync_dir(target_dir)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, file=sys.stderr)


def pack_coco(src_dir: str, target_dir: str, split: str, *, with_segmentation: bool = False,
              strict: bool = False, overwrite: bool = False, num_workers: int = 2,
              bbox_tolerance: float = DEFAULT_BBOX_TOLERANCE, map_size: int | None = None,
              progress: bool = True, log=print, allow_outside_src: bool = False) -> PackResult:
    """Pack one COCO split into ``{target_dir}/{split}_lmdb``; see the module docstring.

    An image file that lies outside ``src_dir`` (and the split's image directory) once ``..`` and symlinks
    are resolved is a problem of its record, unless ``allow_outside_src``.
    """
    t0 = time.perf_counter()
    ann_path, img_dir = split_paths(src_dir, split)
    if not osp.isfile(ann_path):
        raise PackError(f'split {split!r} not found: {ann_path} does not exist. Expected COCO layout '
                        f'{src_dir}/annotations/instances_{split}2017.json and {src_dir}/{split}2017/.')
    if not osp.isdir(img_dir):
        raise PackError(f'split {split!r}: image directory {img_dir} does not exist.')
    if osp.exists(target_dir) and not osp.isdir(target_dir):
        raise PackError(f'the target directory {target_dir} is a file, not a directory; it was left as it '
                        'is. Choose another --target-data-dir.')
    try:
        os.makedirs(target_dir, exist_ok=True)
    except OSError as e:
        raise _write_failure(e, target_dir, 'creating the target directory') from None
    lock = _SplitLock(target_dir, split)
    lock.acquire()
    try:
        return _pack_locked(t0, src_dir, ann_path, img_dir, target_dir, split, lock, with_segmentation,
                            strict, overwrite, num_workers, bbox_tolerance, map_size, progress, log,
                            allow_outside_src)
    finally:
        lock.release()


def _pack_locked(t0, src_dir, ann_path, img_dir, target_dir, split, lock, with_segmentation, strict,
                 overwrite, num_workers, bbox_tolerance, map_size, progress, log,
                 allow_outside_src) -> PackResult:
    final = target_path(target_dir, split)
    try:
        _clean_leftovers(target_dir, split, final, log)
    except OSError as e:
        raise _write_failure(e, target_dir, 'removing what an earlier, killed run left') from None
    state, detail = _pack_state(final)
    if state == 'file':
        raise PackError(f'{final} is a file, not a pack; it was left as it is (--overwrite replaces packs '
                        'only). Move or remove it, or choose another --target-data-dir.')
    if state != 'absent' and not overwrite:
        what = {'complete': 'a complete pack', 'broken': f'a damaged pack: {detail}'}.get(
            state, 'something that is not a complete pack')
        raise PackError(f'{final} already exists ({what}); not overwriting it, it was left as it is. '
                        'Pass --overwrite to replace it, or choose another --target-data-dir.')

    data, sha256 = _load_json(ann_path)
    problems: list[Problem] = []
    categories, images, anns_by_image = _validate_records(data, bbox_tolerance, problems, src_dir, img_dir,
                                                          allow_outside_src)
    n_json_images, n_json_anns = len(data['images']), len(data['annotations'])
    del data
    for p in problems:
        log(p.line())
    if strict and problems:
        raise PackError(f'{len(problems)} problem(s) in {ann_path} and --strict is set; nothing written.')

    est = sum(osp.getsize(osp.join(img_dir, im['file_name']))
              for im in images if osp.isfile(osp.join(img_dir, im['file_name'])))
    if map_size is None:
        map_size = int(est * 1.25) + (64 << 20)
    free = _available_bytes(target_dir)
    if free is not None and est > free:
        log(f'warning: {target_dir} has {_mb(free)} free but the images alone take {_mb(est)}; the pack '
            'will most likely stop with "no space left"')

    prefix = f'.{split}_lmdb.'
    tmp = osp.join(target_dir, f'{prefix}tmp-{uuid.uuid4().hex[:8]}')
    writer = bar = None
    stage = f'creating {tmp}'
    try:
        os.makedirs(tmp)
        writer = _GrowingWriter(tmp, map_size)
        bar = _progress(len(images), f'pack {split}', progress)
        stage = f'writing images into {tmp}'
        cols: dict[str, list] = defaultdict(list)
        batch: list[tuple[bytes, bytes]] = []
        exif_oriented: list[dict] = []
        n_bytes = n_anns = n_crowd = batch_bytes = batch_images = 0
        for im, img_bytes, problem, size in _checked_images(img_dir, images, num_workers,
                                                            close_fds=(lock.fd,)):
            anns = anns_by_image.get(im['id'], [])
            if size is not None and size.orientation != 1:
                exif_oriented.append(dict(image_id=im['id'], file_name=im['file_name'],
                                          orientation=size.orientation, stored_size=list(size.stored),
                                          decoded_size=list(size.decoded), packed=problem is None))
            if problem is not None:
                p = Problem(problem[0], problem[1], im['id'], im['file_name'],
                            action=f'skipped with its {len(anns)} annotation(s)')
                problems.append(p)
                log(p.line())
            else:
                cols['image_id'].append(im['id'])
                cols['width'].append(im['width'])
                cols['height'].append(im['height'])
                cols['file_name'].append(im['file_name'].encode())
                cols['ann_start'].append(n_anns)
                cols['ann_count'].append(len(anns))
                for a in anns:
                    cols['ann_id'].append(a['id'])
                    cols['category_id'].append(a['category_id'])
                    cols['bbox'].append(a['bbox'])
                    cols['area'].append(a['area'])
                    cols['iscrowd'].append(a['iscrowd'])
                n_anns += len(anns)
                n_crowd += sum(a['iscrowd'] for a in anns)
                # every record is followed by its checksum record (CRC32 and image id), checked on read
                key = image_key(im['file_name'])
                batch += [(key, img_bytes), checksum_record(key, img_bytes, im['id'])]
                if with_segmentation:
                    key, segs = seg_key(im['id']), json.dumps([a['segmentation'] for a in anns]).encode()
                    batch += [(key, segs), checksum_record(key, segs, im['id'])]
                n_bytes += len(img_bytes)
                batch_bytes += len(img_bytes)
                batch_images += 1
            if batch_images >= BATCH_IMAGES or batch_bytes >= BATCH_BYTES:
                writer.put_many(batch)
                batch, batch_bytes, batch_images = [], 0, 0
            if bar is not None:
                bar.update(1)
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f'{n_bytes / 1e6 / dt:.1f} MB/s, {len(problems)} problem(s)',
                                    refresh=False)
        if strict and problems:
            raise PackError(f'{len(problems)} problem(s) and --strict is set; nothing written.')
        stage = f'writing the last images and the index into {tmp}'
        columns = dict(
            image_id=np.asarray(cols['image_id'], np.int64),
            width=np.asarray(cols['width'], np.int32),
            height=np.asarray(cols['height'], np.int32),
            file_name=np.asarray(cols['file_name'], dtype=bytes) if cols['file_name']
            else np.zeros(0, 'S1'),
            ann_start=np.asarray(cols['ann_start'], np.int64),
            ann_count=np.asarray(cols['ann_count'], np.int32),
            ann_id=np.asarray(cols['ann_id'], np.int64),
            category_id=np.asarray(cols['category_id'], np.int32),
            bbox=np.asarray(cols['bbox'], np.float64).reshape(-1, 4),
            area=np.asarray(cols['area'], np.float64),
            iscrowd=np.asarray(cols['iscrowd'], np.uint8),
        )
        index, categories_json = encode_index(columns), json.dumps(categories).encode()
        manifest = dict(
            format=FORMAT_NAME, format_version=FORMAT_VERSION, split=split, checksum=CHECKSUM,
            index_crc32=zlib.crc32(index), categories_crc32=zlib.crc32(categories_json),
            num_images=len(columns['image_id']), num_annotations=int(n_anns), num_crowd=int(n_crowd),
            num_categories=len(categories), with_segmentation=with_segmentation,
            source_json=osp.abspath(ann_path), source_json_sha256=sha256,
            source_num_images=n_json_images, source_num_annotations=n_json_anns,
            num_problems=len(problems), image_bytes=n_bytes,
            created=time.strftime('%Y-%m-%dT%H:%M:%S%z'), complete=True)
        batch += [(INDEX_KEY, index), (CATEGORIES_KEY, categories_json)]
        writer.put_many(batch)
        # the manifest goes last, in its own transaction: its presence means "complete"
        writer.put_many([(MANIFEST_KEY, json.dumps(manifest).encode())])
        writer.close()
        writer = None
        _fsync_dir(tmp)
        # swap into place: rename is atomic, so readers see either nothing/the old pack or the new one
        stage = f'moving {tmp} to {final}'
        _swap_into_place(tmp, final, osp.join(target_dir, f'{prefix}old-{uuid.uuid4().hex[:8]}'))
    except (OSError, lmdb.Error) as e:
        kept = f'{final} was not changed' if osp.lexists(final) else 'nothing else was written'
        err = _write_failure(e, target_dir, stage, need=est, after=f'The partial pack was removed; {kept}.')
        _discard(writer, tmp)
        raise err from None
    except BrokenProcessPool:
        _discard(writer, tmp)
        raise PackError('a worker process reading images died (killed, perhaps for lack of memory); nothing '
                        'was written. Rerun with fewer --num-workers.') from None
    except BaseException:
        _discard(writer, tmp)
        raise
    finally:
        if bar is not None:
            bar.close()

    result = PackResult(target=final, num_images=manifest['num_images'], num_annotations=n_anns,
                        num_crowd=n_crowd, problems=problems, seconds=time.perf_counter() - t0,
                        bytes_written=n_bytes, report_path=report_path(target_dir, split),
                        exif_oriented=exif_oriented)
    try:
        _write_report(result, manifest)
    except OSError as e:
        raise _write_failure(e, target_dir, f'writing the report {result.report_path}',
                             after=f'The pack {final} itself is complete.') from None
    return result


def _discard(writer: _GrowingWriter | None, tmp: str) -> None:
    if writer is not None:
        try:
            writer.env.close()
        except lmdb.Error:
            pass
    shutil.rmtree(tmp, ignore_errors=True)


def _write_report(result: PackResult, manifest: dict) -> None:
    counts = Counter(p.kind for p in result.problems)
    report = dict(target=result.target, manifest=manifest, problem_counts=dict(counts),
                  problems=[p.to_dict() | dict(line=p.line()) for p in result.problems],
                  exif_oriented=result.exif_oriented)
    write_json_atomic(report, result.report_path)


def summarize(result: PackResult) -> Iterable[str]:
    yield (f'packed {result.num_images} images, {result.num_annotations} annotations '
           f'({result.num_crowd} crowd) into {result.target} in {result.seconds:.1f} s: '
           f'{result.images_per_s:.0f} images/s, {result.mb_per_s:.1f} MB/s')
    if result.problems:
        counts = Counter(p.kind for p in result.problems)
        yield (f'{len(result.problems)} problem(s) skipped ('
               + ', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))
               + f'); details in {result.report_path}')
    else:
        yield f'no problems found; report in {result.report_path}'
    if result.exif_oriented:
        n_packed = sum(e['packed'] for e in result.exif_oriented)
        yield (f'{len(result.exif_oriented)} image(s) carry an EXIF orientation ({n_packed} packed): '
               'training decodes them rotated or flipped, so their sizes were checked in that displayed '
               'frame and their boxes must be drawn in it too; listed under "exif_oriented" in '
               f'{result.report_path}')
