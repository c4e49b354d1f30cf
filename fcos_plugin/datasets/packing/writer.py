"""Writing a pack into its temporary directory: the image records (each followed by its checksum record) in
batches as the workers deliver them, then the column index and the categories, and last the manifest,
whose presence marks the pack complete. The LMDB map grows as needed (no ``MDB_MAP_FULL``)."""
from __future__ import annotations

import json
import os
import os.path as osp
import shutil
import sys
import time
import zlib
from collections import defaultdict

import lmdb
import numpy as np

from ...utils.fileio import fsync_path
from ..lmdb_format import (
    CATEGORIES_KEY,
    CHECKSUM,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_KEY,
    MANIFEST_KEY,
    checksum_record,
    encode_index,
    image_key,
    seg_key,
)
from .options import PackOptions
from .records import MAX_KEY_BYTES, CocoRecords
from .report import PackError, Problem
from .workers import checked_images

#: a transaction is committed after this many images or this many image bytes, whichever comes first
BATCH_IMAGES = 256
BATCH_BYTES = 16 << 20


class GrowingWriter:
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


class IndexColumns:
    """The column index of a pack (see :func:`~fcos_plugin.datasets.lmdb_format.encode_index`), built
    image by image."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = defaultdict(list)
        self.num_annotations = self.num_crowd = 0

    def add(self, im: dict, anns: list[dict]) -> None:
        cols = self.cols
        cols['image_id'].append(im['id'])
        cols['width'].append(im['width'])
        cols['height'].append(im['height'])
        cols['file_name'].append(im['file_name'].encode())
        cols['ann_start'].append(self.num_annotations)
        cols['ann_count'].append(len(anns))
        for a in anns:
            cols['ann_id'].append(a['id'])
            cols['category_id'].append(a['category_id'])
            cols['bbox'].append(a['bbox'])
            cols['area'].append(a['area'])
            cols['iscrowd'].append(a['iscrowd'])
        self.num_annotations += len(anns)
        self.num_crowd += sum(a['iscrowd'] for a in anns)

    def arrays(self) -> dict[str, np.ndarray]:
        cols = self.cols
        return dict(
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


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, file=sys.stderr)


class PackWriter:
    """Writes one pack into the new directory ``tmp``. ``stage`` says what it is doing, for the message of
    a write that fails; :meth:`discard` removes whatever it wrote."""

    def __init__(self, tmp: str, map_size: int) -> None:
        self.tmp, self.map_size = tmp, map_size
        self.stage = f'creating {tmp}'
        self.image_bytes = 0
        self._lmdb: GrowingWriter | None = None
        self._batch: list[tuple[bytes, bytes]] = []
        self._batch_bytes = self._batch_images = 0

    def write(self, opts: PackOptions, records: CocoRecords, problems: list[Problem],
              close_fds: tuple[int, ...], t0: float) -> tuple[dict, list[dict]]:
        """Write the images of ``records`` (an image that fails its check is a new entry of ``problems``),
        the index, the categories and the manifest; return the manifest and the images that carry an EXIF
        orientation (see :attr:`~.report.PackResult.exif_oriented`). Worker processes close
        ``close_fds``; ``t0`` is when the pack began, for the rate the progress bar shows."""
        os.makedirs(self.tmp)
        self._lmdb = GrowingWriter(self.tmp, self.map_size)
        self.stage = f'writing images into {self.tmp}'
        index = IndexColumns()
        exif_oriented = self._write_images(opts, records, problems, index, close_fds, t0)
        if opts.strict and problems:
            raise PackError(f'{len(problems)} problem(s) and --strict is set; nothing written.')
        self.stage = f'writing the last images and the index into {self.tmp}'
        manifest = self._write_index(opts, records, index, len(problems))
        return manifest, exif_oriented

    def _write_images(self, opts: PackOptions, records: CocoRecords, problems: list[Problem],
                      index: IndexColumns, close_fds: tuple[int, ...], t0: float) -> list[dict]:
        exif_oriented: list[dict] = []
        bar = _progress(len(records.images), f'pack {opts.split}', opts.progress)
        try:
            for im, img_bytes, problem, size in checked_images(opts.img_dir, records.images, opts.num_workers,
                                                               close_fds=close_fds):
                anns = records.anns_by_image.get(im['id'], [])
                if size is not None and size.orientation != 1:
                    exif_oriented.append(dict(image_id=im['id'], file_name=im['file_name'],
                                              orientation=size.orientation, stored_size=list(size.stored),
                                              decoded_size=list(size.decoded), packed=problem is None))
                if problem is not None:
                    p = Problem(problem[0], problem[1], im['id'], im['file_name'],
                                action=f'skipped with its {len(anns)} annotation(s)')
                    problems.append(p)
                    opts.log(p.line())
                else:
                    index.add(im, anns)
                    self._add(im, img_bytes, anns, opts.with_segmentation)
                if self._batch_images >= BATCH_IMAGES or self._batch_bytes >= BATCH_BYTES:
                    self._flush()
                if bar is not None:
                    bar.update(1)
                    dt = max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(f'{self.image_bytes / 1e6 / dt:.1f} MB/s, {len(problems)} problem(s)',
                                        refresh=False)
        finally:
            if bar is not None:
                bar.close()
        return exif_oriented

    def _add(self, im: dict, img_bytes: bytes, anns: list[dict], with_segmentation: bool) -> None:
        # every record is followed by its checksum record (CRC32 and image id), checked on read
        key = image_key(im['file_name'])
        self._batch += [(key, img_bytes), checksum_record(key, img_bytes, im['id'])]
        if with_segmentation:
            key, segs = seg_key(im['id']), json.dumps([a['segmentation'] for a in anns]).encode()
            self._batch += [(key, segs), checksum_record(key, segs, im['id'])]
        self.image_bytes += len(img_bytes)
        self._batch_bytes += len(img_bytes)
        self._batch_images += 1

    def _flush(self) -> None:
        self._lmdb.put_many(self._batch)
        self._batch, self._batch_bytes, self._batch_images = [], 0, 0

    def _write_index(self, opts: PackOptions, records: CocoRecords, index: IndexColumns,
                     num_problems: int) -> dict:
        """Write the last batch, the index and the categories, then the manifest; return the manifest."""
        columns = index.arrays()
        index_bytes, categories_json = encode_index(columns), json.dumps(records.categories).encode()
        manifest = dict(
            format=FORMAT_NAME, format_version=FORMAT_VERSION, split=opts.split, checksum=CHECKSUM,
            index_crc32=zlib.crc32(index_bytes), categories_crc32=zlib.crc32(categories_json),
            num_images=len(columns['image_id']), num_annotations=int(index.num_annotations),
            num_crowd=int(index.num_crowd), num_categories=len(records.categories),
            with_segmentation=opts.with_segmentation, source_json=osp.abspath(opts.ann_path),
            source_json_sha256=records.sha256, source_num_images=records.num_json_images,
            source_num_annotations=records.num_json_annotations, num_problems=num_problems,
            image_bytes=self.image_bytes, created=time.strftime('%Y-%m-%dT%H:%M:%S%z'), complete=True)
        self._batch += [(INDEX_KEY, index_bytes), (CATEGORIES_KEY, categories_json)]
        self._flush()
        # the manifest goes last, in its own transaction: its presence means "complete"
        self._lmdb.put_many([(MANIFEST_KEY, json.dumps(manifest).encode())])
        self._lmdb.close()
        self._lmdb = None
        fsync_path(self.tmp)
        return manifest

    def discard(self) -> None:
        """Close the LMDB if it is open and remove the temporary directory."""
        if self._lmdb is not None:
            try:
                self._lmdb.env.close()
            except lmdb.Error:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
