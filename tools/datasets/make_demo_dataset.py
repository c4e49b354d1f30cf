#!/usr/bin/env python
r"""Write the built-in synthetic-shapes demo dataset in COCO's layout (deterministic per seed).

    python tools/datasets/make_demo_dataset.py --out-dir data/demo [--num-train 300] \
        [--num-val 60] [--seed 0] [--force]

writes ``OUT/annotations/instances_{train,val}2017.json`` and ``OUT/{train,val}2017/*.jpg``: six
classes of distinct shape and colour (ids 1, 2, 3, 5, 7, 9) on textured backgrounds, 1-8 objects
per 320-512 px image, boxes of the full object, ``area`` of its visible part. The same seed gives
byte-identical files. Exit status: 0 written, 1 output exists (use --force), 2 bad arguments.
"""
import argparse
import sys
import time

from fcos_plugin.datasets.demo_data import make_demo_dataset


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out-dir', required=True, help='dataset root to create, e.g. data/demo')
    p.add_argument('--num-train', type=int, default=300, help='training images (default 300)')
    p.add_argument('--num-val', type=int, default=60, help='validation images (default 60)')
    p.add_argument('--seed', type=int, default=0, help='random seed (default 0)')
    p.add_argument('--force', action='store_true', help='replace an existing OUT')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    args = p.parse_args(argv)
    if args.num_train < 0 or args.num_val < 0:
        p.error('--num-train and --num-val must be >= 0')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        counts = make_demo_dataset(args.out_dir, args.num_train, args.num_val, args.seed,
                                   force=args.force, show_progress=not args.no_progress)
    except FileExistsError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(f"wrote {counts['train_images']} train images ({counts['train_annotations']} boxes) "
          f"and {counts['val_images']} val images ({counts['val_annotations']} boxes), "
          f"{counts['categories']} categories, seed {args.seed}, to {args.out_dir} "
          f'in {time.perf_counter() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
