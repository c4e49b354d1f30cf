#!/usr/bin/env python
"""LmdbCocoDataset vs mmdet's CocoDataset: read throughput, construction time and resident memory.

    .venv/bin/python benchmarks/bench_dataset.py [--scales 1000 10000 118287] [--workers 2] [--write]

1. Throughput: images/s through the same train pipeline and worker count, over the real tiny COCO train split
   (JPEG files vs the LMDB pack), both measured in this run; the ratio is what matters.
2. Scale: a synthetic COCO train2017-sized split (118k images, ~7.3 boxes per image, small JPEGs) packed by
   the real packer; construction time and resident-memory growth of each dataset, each in a fresh process.
Prints both tables and the machine (CPU, load before and after); ``--write`` puts them into
benchmarks/RESULTS.md, "LMDB dataset vs mmdet CocoDataset" (the commentary under them is kept).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = osp.join(REPO, '..', 'shared', 'data', 'tiny_coco')
SECTION = '## LMDB dataset vs mmdet CocoDataset'
END_MARK = '<!-- end of bench_dataset.py output; commentary below is kept by --write -->'

TRAIN_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomResize', scale=(512, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=(512, 512)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Pad', size=(512, 512)),
    dict(type='PackDetInputs'),
]


def throughput(packed: str, workers: int, rounds: int) -> dict[str, float]:
    """Images/s of both readers; epochs alternate between them so machine noise hits both alike."""
    import torch
    from mmdet.registry import DATASETS
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    init_default_scope('mmdet')
    cfgs = dict(
        json=dict(type='CocoDataset', data_root=TINY, ann_file='annotations/instances_train2017.json',
                  data_prefix=dict(img='train2017/'), pipeline=TRAIN_PIPELINE),
        lmdb=dict(type='LmdbCocoDataset', data_root=packed, ann_file='train_lmdb',
                  pipeline=TRAIN_PIPELINE))
    loaders = {k: torch.utils.data.DataLoader(DATASETS.build(c), batch_size=8, num_workers=workers,
                                              shuffle=True, collate_fn=pseudo_collate,
                                              persistent_workers=workers > 0)
               for k, c in cfgs.items()}
    seconds = dict.fromkeys(loaders, 0.0)
    images = dict.fromkeys(loaders, 0)
    for r in range(rounds + 1):
        for kind, loader in loaders.items():
            t0 = time.perf_counter()
            n = sum(len(batch['inputs']) for batch in loader)
            if r > 0:  # round 0 starts the workers and fills the page cache
                seconds[kind] += time.perf_counter() - t0
                images[kind] += n
    return {k: images[k] / seconds[k] for k in loaders}


def make_scaled_split(root: str, n_images: int, seed: int = 0) -> str:
    """COCO-format train split with n_images small JPEGs (hard links to one file) and ~7.3 boxes each."""
    import cv2
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, 'annotations'), exist_ok=True)
    img_dir = osp.join(root, 'train2017')
    os.makedirs(img_dir, exist_ok=True)
    w = h = 64
    srcs = []  # a file system allows ~65k links per inode: one source file per 50k images
    for k in range(n_images // 50000 + 1):
        srcs.append(osp.join(root, f'src{k}.jpg'))
        cv2.imwrite(srcs[-1], rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    images, anns = [], []
    aid = 1
    for i in range(1, n_images + 1):
        name = f'{i:012d}.jpg'
        path = osp.join(img_dir, name)
        if not osp.exists(path):
            os.link(srcs[i // 50000], path)
        images.append(dict(id=i, file_name=name, width=w, height=h))
        for _ in range(rng.poisson(7.3)):
            x, y = rng.uniform(0, w - 9, 2)
            bw, bh = rng.uniform(2, [w - x, h - y])
            anns.append(dict(id=aid, image_id=i, category_id=int(rng.integers(1, 81)),
                             bbox=[round(float(x), 2), round(float(y), 2), round(float(bw), 2),
                                   round(float(bh), 2)], area=float(bw * bh), iscrowd=0,
                             segmentation=[]))
            aid += 1
    cats = [dict(id=c, name=f'class_{c}', supercategory='x') for c in range(1, 81)]
    with open(osp.join(root, 'annotations', 'instances_train2017.json'), 'w') as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)
    return root


CHILD = r'''
import os, sys, time, json, resource
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
from mmengine.registry import init_default_scope
import fcos_plugin
from mmdet.registry import DATASETS
init_default_scope('mmdet')
kind, root = sys.argv[1], sys.argv[2]
classes = tuple(f'class_{c}' for c in range(1, 81))
if kind == 'json':
    cfg = dict(type='CocoDataset', data_root=root, ann_file='annotations/instances_train2017.json',
               data_prefix=dict(img='train2017/'), metainfo=dict(classes=classes),
               filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=[])
else:
    cfg = dict(type='LmdbCocoDataset', data_root=root, ann_file='train_lmdb',
               filter_cfg=dict(filter_empty_gt=True, min_size=32), pipeline=[])
import gc; gc.collect()
r0, t0 = rss(), time.perf_counter()
ds = DATASETS.build(cfg)
n = len(ds)
dt = time.perf_counter() - t0
gc.collect()
print(json.dumps(dict(seconds=dt, rss_mb=(rss() - r0) / 2**20, len=n)))
'''


def construct(kind: str, root: str) -> dict:
    out = subprocess.run([sys.executable, '-c', CHILD, kind, root], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--scales', type=int, nargs='*', default=[1000, 10000, 118287])
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--epochs', type=int, default=8, help='alternating epochs per reader')
    p.add_argument('--work-dir', default=None)
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    from fcos_plugin.datasets import pack_coco
    work = args.work_dir or tempfile.mkdtemp(prefix='bench_dataset_')

    tiny_packed = osp.join(work, 'tiny')
    if not osp.isdir(osp.join(tiny_packed, 'train_lmdb')):
        pack_coco(TINY, tiny_packed, 'train', progress=False, log=lambda s: None)
    rates = throughput(tiny_packed, args.workers, args.epochs)
    read = [f'### Read throughput (same 512 train pipeline, {args.workers} workers, batch 8, real tiny COCO '
            'train JPEGs)', '', '| reader | images/s |', '|---|---|',
            f'| CocoDataset (JPEG files) | {rates["json"]:.1f} |',
            f'| LmdbCocoDataset | {rates["lmdb"]:.1f} |',
            '', f'Ratio LMDB / files: **{rates["lmdb"] / rates["json"]:.2f}x** ({args.epochs} alternating '
            'epochs per reader).']
    print('\n'.join(read), flush=True)

    scale = ['| images | CocoDataset s | LmdbCocoDataset s | CocoDataset MiB | LmdbCocoDataset MiB | '
             'memory ratio |', '|---|---|---|---|---|---|']
    packing = boxes = None
    for k, n in enumerate(args.scales):
        root = osp.join(work, f'scale_{n}')
        make_scaled_split(root, n)
        if not osp.isdir(osp.join(root, 'train_lmdb')):
            t0 = time.perf_counter()
            res = pack_coco(root, root, 'train', progress=False, log=lambda s: None)
            packing, boxes = time.perf_counter() - t0, res.num_annotations
        else:
            packing = boxes = None
        j, m = construct('json', root), construct('lmdb', root)
        assert j['len'] == m['len'], (j, m)
        b = '**' if k == len(args.scales) - 1 else ''  # the full-scale row
        lmdb_mib = f'{m["rss_mb"]:.1f}' if m['rss_mb'] < 10 else f'{m["rss_mb"]:.0f}'
        scale.append(f'| {n:,} | {j["seconds"]:.2f} | {b}{m["seconds"]:.3f}{b} | {j["rss_mb"]:.0f} | '
                     f'{b}{lmdb_mib}{b} | {b}{j["rss_mb"] / max(m["rss_mb"], 0.1):.0f}x{b} |')
        print(scale[-1], flush=True)
    largest = args.scales[-1]
    split = (f'Synthetic split of {largest:,} images (64x64 JPEGs), '
             + (f'{boxes:,} boxes, ' if boxes is not None else '') + '80 classes, made by '
             '`make_scaled_split` and packed by the real packer'
             + (f' in {packing:.0f} s ({largest / packing:,.0f} images/s, every image decoded to verify it)'
                if packing else ' (pack reused from an earlier run: its time is not measured)')
             + '; `filter_cfg=dict(filter_empty_gt=True, min_size=32)`. Resident memory is the growth of '
             'the process while the dataset is built, in MiB (every DataLoader worker is a copy of that '
             'process).')
    cmd = '.venv/bin/python benchmarks/bench_dataset.py' + (
        '' if args.scales == [1000, 10000, 118287] else f' --scales {" ".join(map(str, args.scales))}')
    text = '\n'.join([
        SECTION, '', f'`{cmd} --write` ({datetime.date.today()}).', '', markdown_line(before), '',
        '### Construction time and resident memory (COCO train2017 scale, boxes only, fresh process each)',
        '', split, '', *scale, '', *read, ''])
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
