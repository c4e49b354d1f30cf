#!/usr/bin/env python
"""Pack MS-COCO (or any COCO-format split) into a self-contained LMDB for fast, lean reading.

    python tools/datasets/mscoco_packer.py --src-data-dir data/mscoco --target-data-dir data/mscoco \
        --split-name train --pack-type lmdb

reads ``SRC/annotations/instances_{split}2017.json`` and ``SRC/{split}2017/`` and writes
``TARGET/{split}_lmdb/`` plus ``TARGET/{split}_pack_report.json``. Exit status: 0 packed (problems, if any,
were skipped and reported), 1 a problem stopped the pack (nothing written), 2 bad arguments, 130 interrupted.

The pack is built in a temporary directory beside the target and renamed into place when complete: an
interrupted or killed run leaves the previous state as it was, and rerunning the same command finishes
the job. ``TARGET/{split}_lmdb.lock`` keeps a second packer of the same split out while one runs.
"""
import argparse
import sys

from fcos_plugin.datasets.coco_packer import DEFAULT_BBOX_TOLERANCE, PackError, pack_coco, summarize


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--src-data-dir', required=True, help='COCO root with annotations/ and {split}2017/')
    p.add_argument('--target-data-dir', required=True, help='where {split}_lmdb/ is written')
    p.add_argument('--split-name', required=True, choices=['train', 'val'])
    p.add_argument('--pack-type', default='lmdb', choices=['lmdb'], help='storage format (LMDB only)')
    p.add_argument('--with-segmentation', action='store_true',
                   help='also store polygon/RLE segmentations (boxes only by default)')
    p.add_argument('--strict', action='store_true',
                   help='any problem in the input is fatal: exit 1 and write nothing')
    p.add_argument('--overwrite', action='store_true', help='replace an existing complete pack')
    p.add_argument('--num-workers', type=int, default=2, help='processes that read and verify images')
    p.add_argument('--bbox-tolerance', type=float, default=DEFAULT_BBOX_TOLERANCE,
                   help='pixels a box may extend past the image border before it is rejected')
    p.add_argument('--allow-outside-src', action='store_true',
                   help='pack image files whose file_name leads outside --src-data-dir (.., absolute paths, '
                        'symlinks out); without it such records are reported and skipped')
    p.add_argument('--no-progress', action='store_true')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = pack_coco(args.src_data_dir, args.target_data_dir, args.split_name,
                           with_segmentation=args.with_segmentation, strict=args.strict,
                           overwrite=args.overwrite, num_workers=args.num_workers,
                           bbox_tolerance=args.bbox_tolerance, progress=not args.no_progress,
                           allow_outside_src=args.allow_outside_src,
                           log=lambda line: print(line, file=sys.stderr))
    except PackError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted: the partial pack was removed and nothing else was changed; rerun the same '
              'command to pack again.', file=sys.stderr)
        return 130
    for line in summarize(result):
        print(line)
    return 0


if __name__ == '__main__':
    sys.exit(main())
