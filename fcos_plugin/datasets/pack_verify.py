"""Check a whole packed split: counts against the manifest, every checksum, every image decodes.

The command-line front end is ``tools/datasets/verify_pack.py``. Reading a pack for training checks each
record it reads; this reads them all, so that damage is found before a run (or after a copy) and every bad
record is listed at once, by key and image id.
"""
from __future__ import annotations

import json
import os.path as osp
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import lmdb

from .coco_packer import decode_problem
from .lmdb_format import (
    CATEGORIES_KEY,
    CHECKSUM,
    IMAGE_KEY_PREFIX,
    INDEX_KEY,
    MANIFEST_KEY,
    SEG_KEY_PREFIX,
    checksum_key,
    checksum_problem,
    image_key,
    is_checksum_key,
    load_packed,
    seg_key,
    shared_env,
)


@dataclass
class BadRecord:
    """One record (``img/<file_name>`` or ``seg/<image_id>``) and what is wrong with it."""

    key: str
    image_id: int | None
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        iid = f'image id {self.image_id}' if self.image_id is not None else 'image id unknown'
        return f'{self.key} ({iid}): ' + '; '.join(self.problems)


@dataclass
class VerifyResult:
    path: str
    manifest: dict
    checksummed: bool
    num_images: int = 0
    num_bytes: int = 0
    seconds: float = 0.0
    count_problems: list[str] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.count_problems and not self.bad


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, file=sys.stderr,
                disable=not enabled)


def verify_pack(path: str, progress: bool = True) -> VerifyResult:
    """Verify the pack ``path`` (a ``{split}_lmdb`` directory).

    Raises ``LmdbFormatError`` (``DamagedPackError`` for damage) when the pack cannot be opened at all:
    not a pack, truncated or unreadable ``data.mdb``, damaged manifest, categories or index. Everything
    else is collected in the result: counts that differ from the manifest, and per record a missing or
    mismatching checksum, a checksum record naming another image, an image that does not decode or has
    another size than the index says, a segmentation record that does not parse or fit the annotations.
    """
    t0 = time.perf_counter()
    path = osp.abspath(path)
    packed = load_packed(path, note_unchecked=False)
    m, c = packed.manifest, packed.columns
    checked = m.get('checksum') == CHECKSUM
    with_seg = bool(m.get('with_segmentation'))
    result = VerifyResult(path=path, manifest=m, checksummed=checked)
    counts = result.count_problems

    n_rows, n_anns = len(c['image_id']), len(c['ann_id'])
    for what, found, want in (
            ('images in the index', n_rows, m.get('num_images')),
            ('annotations in the index', n_anns, m.get('num_annotations')),
            ('crowd annotations in the index', int(c['iscrowd'].sum()), m.get('num_crowd')),
            ('categories', len(packed.categories), m.get('num_categories')),
            ('annotations counted by the images of the index', int(c['ann_count'].sum()),
             m.get('num_annotations'))):
        if found != want:
            counts.append(f'{found} {what}, the manifest says {want}')

    bad: dict[str, BadRecord] = {}

    def report(key: bytes, image_id: int | None, problem: str) -> None:
        name = key.decode(errors='replace')
        bad.setdefault(name, BadRecord(name, image_id)).problems.append(problem)

    env = shared_env(path)
    with env.begin(write=False, buffers=False) as txn:
        # every key: records and checksum records against the index
        image_keys, seg_keys, sums, others = set(), set(), set(), []
        try:
            for key in txn.cursor().iternext(keys=True, values=False):
                if key in (MANIFEST_KEY, CATEGORIES_KEY, INDEX_KEY):
                    continue
                if is_checksum_key(key):
                    sums.add(key)
                elif key.startswith(IMAGE_KEY_PREFIX.encode()):
                    image_keys.add(key)
                elif key.startswith(SEG_KEY_PREFIX.encode()):
                    seg_keys.add(key)
                else:
                    others.append(key)
        except lmdb.Error as e:
            counts.append(f'liblmdb cannot list the keys of the pack: {e}')
        want_images = {image_key(f.decode()): int(i) for f, i in zip(c['file_name'], c['image_id'])}
        want_segs = {seg_key(int(i)): int(i) for i in c['image_id']} if with_seg else {}
        for key in sorted(image_keys - want_images.keys()) + sorted(seg_keys - want_segs.keys()):
            report(key, None, 'record is not in the index')
        if checked:
            for key in sorted(sums - {checksum_key(k) for k in image_keys | seg_keys}):
                report(key, None, 'checksum record without a record')
        elif sums:
            counts.append(f'{len(sums)} checksum records in a pack whose manifest says it has none')
        if others:
            counts.append(f'{len(others)} keys that are not part of the format, e.g. {others[0]!r}')
        if len(image_keys) != m.get('num_images'):
            counts.append(f'{len(image_keys)} image records, the manifest says {m.get("num_images")}')

        bar = _progress(n_rows, f'verify {osp.basename(path)}', progress)
        try:
            for row in range(n_rows):
                image_id = int(c['image_id'][row])
                key = image_key(c['file_name'][row].decode())
                records = [(key, 'image')]
                if with_seg:
                    records.append((seg_key(image_id), 'segmentations'))
                for rkey, kind in records:
                    try:
                        value = txn.get(rkey)
                        stored = txn.get(checksum_key(rkey)) if checked and value is not None else None
                    except lmdb.Error as e:
                        report(rkey, image_id, f'liblmdb cannot read it ({e})')
                        continue
                    if value is None:
                        report(rkey, image_id, f'{kind} record is missing')
                        continue
                    if checked:
                        problem, recorded_id = checksum_problem(value, stored)
                        if problem is not None:
                            report(rkey, image_id, problem)
                        elif recorded_id != image_id:
                            report(rkey, image_id, f'its checksum record names image id {recorded_id}')
                    if kind == 'image':
                        result.num_bytes += len(value)
                        problem = decode_problem(value, int(c['width'][row]), int(c['height'][row]),
                                                 source='the index')
                        if problem is not None:
                            report(rkey, image_id, problem)
                    else:
                        try:
                            segs = json.loads(value)
                            if not isinstance(segs, list) or len(segs) != int(c['ann_count'][row]):
                                report(rkey, image_id, 'segmentations do not match the image\'s '
                                       f'{int(c["ann_count"][row])} annotations')
                        except ValueError as e:
                            report(rkey, image_id, f'segmentations do not parse ({e})')
                result.num_images += 1
                bar.update(1)
                if bad:
                    bar.set_postfix_str(f'{len(bad)} bad record(s)', refresh=False)
        finally:
            bar.close()
    result.bad = list(bad.values())
    result.seconds = time.perf_counter() - t0
    return result


def summarize(result: VerifyResult) -> Iterator[str]:
    """The summary lines the tool prints: what was checked, then either all good or every problem."""
    m = result.manifest
    yield (f'{result.path}: {result.num_images} images ({result.num_bytes / 1e6:.1f} MB) checked in '
           f'{result.seconds:.1f} s ({result.num_images / max(result.seconds, 1e-9):.0f} images/s)')
    if not result.checksummed:
        yield (f'note: format version {m.get("format_version")} pack: its records carry no checksums, only '
               'counts and decoding were checked; repack it with tools/datasets/mscoco_packer.py '
               '--overwrite to add them')
    if result.count_problems:
        yield f'{len(result.count_problems)} count problem(s):'
        yield from (f'  {p}' for p in result.count_problems)
    else:
        yield (f'counts match the manifest: {m.get("num_images")} images, {m.get("num_annotations")} '
               f'annotations ({m.get("num_crowd")} crowd), {m.get("num_categories")} categories')
    if result.bad:
        yield f'{len(result.bad)} bad record(s):'
        yield from (f'  {b.line()}' for b in result.bad)
    else:
        yield ('every record matches its checksum and every image decodes' if result.checksummed
               else 'every image decodes')
    yield 'OK' if result.ok else 'FAILED: the pack is damaged; repack the split or restore it from a copy'
