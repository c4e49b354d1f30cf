"""Pack a COCO split (``instances_{split}2017.json`` + ``{split}2017/``) into a self-contained LMDB.

The command-line front end is ``tools/datasets/mscoco_packer.py``. Guarantees:

* the original encoded image bytes are stored unchanged (no re-encoding);
* every problem in the input (missing/undecodable/truncated image, size mismatch, bad box, unknown
  category, duplicate id, ...) is reported with the image id and file, written to
  ``{target}/{split}_pack_report.json``, and only the affected records are skipped;
  ``strict=True`` turns any problem into a failure that writes nothing;
* the pack is built in a temporary sibling directory and renamed into place only when complete, so a
  ``kill -9`` at any moment never leaves a target that a reader takes for complete, and rerunning the same
  command succeeds; a complete target is never overwritten unless asked;
* the LMDB map grows as needed (no ``MDB_MAP_FULL``).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import os.path as osp
import shutil
import sys
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import lmdb
import numpy as np
from PIL import Image

from .lmdb_format import (
    CATEGORIES_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_KEY,
    MANIFEST_KEY,
    LmdbFormatError,
    encode_index,
    image_key,
    load_packed,
    seg_key,
)

#: images written per LMDB transaction
BATCH_IMAGES = 256
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


def _validate_records(data: dict, bbox_tolerance: float, problems: list[Problem]):
    """Return (categories, images, anns_by_image) keeping only valid records, in source order."""
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
    name_count = Counter(im.get('file_name') for im in data['images'] if isinstance(im, dict))
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
        if id_count[iid] > 1:
            problems.append(Problem('duplicate_image_id',
                                    f'image id {iid} is used by {id_count[iid]} image records; '
                                    'its annotations cannot be attributed', iid, fname,
                                    action='skipped with its annotations'))
            continue
        if name_count[fname] > 1:
            problems.append(Problem('duplicate_file_name',
                                    f'file name is used by {name_count[fname]} image records', iid, fname,
                                    action='skipped with its annotations'))
            continue
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
def check_image(path: str, width: int, height: int) -> tuple[bytes | None, str | None]:
    """Read an image file and decode it fully; return (bytes, None) or (None, problem)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None, 'image file is missing'
    except OSError as e:
        return None, f'cannot read image file ({e.strerror})'
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            # decoding at reduced DCT scale still reads the whole entropy-coded stream, so
            # truncation and corruption are caught at a fraction of the cost of a full decode
            im.draft('RGB', (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except Exception as e:  # PIL raises many types for corrupt data
        return None, f'cannot decode image ({type(e).__name__}: {e})'
    if size != (width, height):
        return None, (f'image is {size[0]}x{size[1]} but the JSON says {width}x{height}')
    return data, None


def _check_image_task(args: tuple[str, int, int]) -> tuple[bytes | None, str | None]:
    return check_image(*args)


def _checked_images(img_dir: str, images: list[dict], num_workers: int
                    ) -> Iterator[tuple[dict, bytes | None, str | None]]:
    tasks = [(osp.join(img_dir, im['file_name']), im['width'], im['height']) for im in images]
    if num_workers <= 1:
        for im, t in zip(images, tasks):
            yield (im, *check_image(*t))
        return
    with ProcessPoolExecutor(num_workers) as pool:
        for im, res in zip(images, pool.map(_check_image_task, tasks, chunksize=16)):
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

    def close(self) -> None:
        self.env.sync(True)
        self.env.close()


def _existing_state(final: str) -> str:
    if not osp.exists(final):
        return 'absent'
    try:
        load_packed(final)
        return 'complete'
    except LmdbFormatError:
        return 'foreign'


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, file=sys.stderr)


def pack_coco(src_dir: str, target_dir: str, split: str, *, with_segmentation: bool = False,
              strict: bool = False, overwrite: bool = False, num_workers: int = 2,
              bbox_tolerance: float = DEFAULT_BBOX_TOLERANCE, map_size: int | None = None,
              progress: bool = True, log=print) -> PackResult:
    """Pack one COCO split into ``{target_dir}/{split}_lmdb``; see the module docstring."""
    t0 = time.perf_counter()
    ann_path, img_dir = split_paths(src_dir, split)
    if not osp.isfile(ann_path):
        raise PackError(f'split {split!r} not found: {ann_path} does not exist. Expected COCO layout '
                        f'{src_dir}/annotations/instances_{split}2017.json and {src_dir}/{split}2017/.')
    if not osp.isdir(img_dir):
        raise PackError(f'split {split!r}: image directory {img_dir} does not exist.')
    final = target_path(target_dir, split)
    state = _existing_state(final)
    if state != 'absent' and not overwrite:
        what = 'a complete pack' if state == 'complete' else 'something that is not a complete pack'
        raise PackError(f'{final} already exists ({what}); not overwriting it. '
                        'Pass --overwrite to replace it, or choose another --target-data-dir.')

    os.makedirs(target_dir, exist_ok=True)
    # leftovers of killed runs: never complete, safe to remove
    stale_prefix = f'.{split}_lmdb.'
    for name in os.listdir(target_dir):
        if name.startswith(stale_prefix):
            shutil.rmtree(osp.join(target_dir, name), ignore_errors=True)

    data, sha256 = _load_json(ann_path)
    problems: list[Problem] = []
    categories, images, anns_by_image = _validate_records(data, bbox_tolerance, problems)
    n_json_images, n_json_anns = len(data['images']), len(data['annotations'])
    del data
    for p in problems:
        log(p.line())
    if strict and problems:
        raise PackError(f'{len(problems)} problem(s) in {ann_path} and --strict is set; nothing written.')

    tmp = osp.join(target_dir, f'{stale_prefix}tmp-{uuid.uuid4().hex[:8]}')
    os.makedirs(tmp)
    if map_size is None:
        est = sum(osp.getsize(osp.join(img_dir, im['file_name']))
                  for im in images if osp.isfile(osp.join(img_dir, im['file_name'])))
        map_size = int(est * 1.25) + (64 << 20)
    writer = _GrowingWriter(tmp, map_size)
    bar = _progress(len(images), f'pack {split}', progress)
    try:
        cols: dict[str, list] = defaultdict(list)
        batch: list[tuple[bytes, bytes]] = []
        n_bytes = n_anns = n_crowd = 0
        for im, img_bytes, problem in _checked_images(img_dir, images, num_workers):
            anns = anns_by_image.get(im['id'], [])
            if problem is not None:
                p = Problem('bad_image', problem, im['id'], im['file_name'],
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
                batch.append((image_key(im['file_name']), img_bytes))
                if with_segmentation:
                    batch.append((seg_key(im['id']),
                                  json.dumps([a['segmentation'] for a in anns]).encode()))
                n_bytes += len(img_bytes)
            if len(batch) >= BATCH_IMAGES:
                writer.put_many(batch)
                batch = []
            if bar is not None:
                bar.update(1)
                dt = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f'{n_bytes / 1e6 / dt:.1f} MB/s, {len(problems)} problem(s)',
                                    refresh=False)
        if strict and problems:
            raise PackError(f'{len(problems)} problem(s) and --strict is set; nothing written.')
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
        manifest = dict(
            format=FORMAT_NAME, format_version=FORMAT_VERSION, split=split,
            num_images=len(columns['image_id']), num_annotations=int(n_anns), num_crowd=int(n_crowd),
            num_categories=len(categories), with_segmentation=with_segmentation,
            source_json=osp.abspath(ann_path), source_json_sha256=sha256,
            source_num_images=n_json_images, source_num_annotations=n_json_anns,
            num_problems=len(problems), image_bytes=n_bytes,
            created=time.strftime('%Y-%m-%dT%H:%M:%S%z'), complete=True)
        batch += [(INDEX_KEY, encode_index(columns)),
                  (CATEGORIES_KEY, json.dumps(categories).encode())]
        writer.put_many(batch)
        # the manifest goes last, in its own transaction: its presence means "complete"
        writer.put_many([(MANIFEST_KEY, json.dumps(manifest).encode())])
        writer.close()
        writer = None
        _fsync_dir(tmp)
    except BaseException:
        if writer is not None:
            writer.env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()

    # swap into place: rename is atomic, so readers see either nothing/the old pack or the new one
    if osp.exists(final):
        old = osp.join(target_dir, f'{stale_prefix}old-{uuid.uuid4().hex[:8]}')
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(target_dir)

    result = PackResult(target=final, num_images=manifest['num_images'], num_annotations=n_anns,
                        num_crowd=n_crowd, problems=problems, seconds=time.perf_counter() - t0,
                        bytes_written=n_bytes, report_path=report_path(target_dir, split))
    _write_report(result, manifest)
    return result


def _write_report(result: PackResult, manifest: dict) -> None:
    counts = Counter(p.kind for p in result.problems)
    report = dict(target=result.target, manifest=manifest, problem_counts=dict(counts),
                  problems=[p.to_dict() | dict(line=p.line()) for p in result.problems])
    tmp = result.report_path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, result.report_path)


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
