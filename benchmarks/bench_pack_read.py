#!/usr/bin/env python
"""Cost of the per-record CRC32 check when reading a pack: images/s with and without it, same process.

    .venv/bin/python benchmarks/bench_pack_read.py [--rounds 10] [--work-dir DIR] [--write]

Reads the real tiny COCO train split (50 JPEGs, ~140 KB each) packed into LMDB, warm page cache, one process,
at three levels:

1. ``bytes``: ``LmdbImageBackend.get`` (what ``LoadImageFromFile`` fetches): the checked read against the
   read as it was before checksums (one ``txn.get``, no check);
2. ``decode``: the bytes decoded to a BGR array (``mmcv.imfrombytes``, as ``LoadImageFromFile`` does);
3. ``pipeline``: ``LmdbCocoDataset[i]`` through bench_dataset.py's 512 train pipeline (what a DataLoader
   worker does per sample); the unchecked variant swaps the backend's ``get`` for the old one.

Rounds alternate the order of the two variants (ABBA), so that load from other jobs on the machine hits both
alike; the ratio checked / unchecked is what matters. Prints the table and the machine (CPU, load before
and after); ``--write`` puts them into benchmarks/RESULTS.md, "Pack integrity" (commentary kept).
"""
from __future__ import annotations

import argparse
import datetime
import os.path as osp
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, '..', 'shared', 'data', 'tiny_coco')
SECTION = '## Pack integrity: cost of the per-record CRC32 check'
END_MARK = '<!-- end of bench_pack_read.py output; commentary below is kept by --write -->'


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--rounds', type=int, default=10, help='alternating rounds (each times both variants)')
    p.add_argument('--work-dir', default=None, help='where the pack is written (a temporary directory)')
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()

    import mmcv
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    from fcos_plugin.datasets import LmdbCocoDataset, LmdbImageBackend, load_packed, pack_coco
    from fcos_plugin.datasets.lmdb_format import image_uri, shared_env, split_uri
    init_default_scope('mmdet')
    from bench_dataset import TRAIN_PIPELINE

    work = args.work_dir or tempfile.mkdtemp(prefix='bench_pack_read_')
    if not osp.isdir(osp.join(work, 'train_lmdb')):
        pack_coco(TINY, work, 'train', progress=False, log=lambda s: None)
    pack = osp.join(work, 'train_lmdb')
    packed = load_packed(pack)
    uris = [image_uri(pack, f.decode()) for f in packed.columns['file_name']]
    mb = packed.manifest['image_bytes'] / 1e6

    checked_get = LmdbImageBackend.get

    def unchecked_get(self, filepath) -> bytes:  # LmdbImageBackend.get before checksums
        db, key = split_uri(str(filepath))
        with shared_env(db).begin(write=False, buffers=False) as txn:
            value = txn.get(key)
        if value is None:
            raise FileNotFoundError(key)
        return value

    backend = LmdbImageBackend()
    ds = LmdbCocoDataset(data_root=work, ann_file='train_lmdb', pipeline=TRAIN_PIPELINE)

    def bytes_pass(get) -> int:
        for uri in uris:
            get(backend, uri)
        return len(uris)

    def decode_pass(get) -> int:
        for uri in uris:
            mmcv.imfrombytes(get(backend, uri))
        return len(uris)

    def pipeline_pass(get) -> int:
        LmdbImageBackend.get = get
        try:
            for i in range(len(ds)):
                ds[i]
        finally:
            LmdbImageBackend.get = checked_get
        return len(ds)

    # passes per timing: each timing lasts about 0.2-1 s
    levels = dict(bytes=(bytes_pass, 40), decode=(decode_pass, 2), pipeline=(pipeline_pass, 1))
    variants = dict(checked=checked_get, unchecked=unchecked_get)
    rates: dict[str, dict[str, list[float]]] = {lv: {v: [] for v in variants} for lv in levels}
    for level, (run, passes) in levels.items():
        for variant in variants.values():  # warm-up: page cache, handles, pipeline caches
            run(variant)
        for r in range(args.rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                t0 = time.perf_counter()
                n = sum(run(variants[name]) for _ in range(passes))
                rates[level][name].append(n / (time.perf_counter() - t0))

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        return (xs[len(xs) // 2] + xs[(len(xs) - 1) // 2]) / 2

    rows = ['| level | unchecked images/s | checked images/s | ratio checked / unchecked (median of rounds, '
            'range) |', '|---|---|---|---|']
    labels = dict(bytes='raw bytes (`get` only)', decode='get + JPEG decode (`mmcv.imfrombytes`)',
                  pipeline='`LmdbCocoDataset[i]`, 512 train pipeline')
    for level in levels:
        u, c = median(rates[level]['unchecked']), median(rates[level]['checked'])
        per_round = sorted(cr / ur for cr, ur in zip(rates[level]['checked'], rates[level]['unchecked']))
        rows.append(f'| {labels[level]} | {u:,.0f} | {c:,.0f} | **{median(per_round):.3f}x** '
                    f'({per_round[0]:.3f}-{per_round[-1]:.3f}) |')
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_pack_read.py --rounds {args.rounds} --write` '
        f'({datetime.date.today()}): the real tiny COCO train split packed ({len(uris)} JPEGs, {mb:.1f} MB), '
        'warm page cache, one process; checked reads (`LmdbImageBackend.get` as shipped: value and checksum '
        'record fetched in one transaction, `zlib.crc32` compared, `data.mdb` size checked) against the '
        f'read before checksums (one `txn.get`), {args.rounds} rounds alternating the order of the two.',
        '', markdown_line(before), '', *rows, ''])
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
