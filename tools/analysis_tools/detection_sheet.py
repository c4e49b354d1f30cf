#!/usr/bin/env python
"""Put a few detection pictures into one sheet, e.g. those of ``tools/test.py --show-dir`` (ground truth |
prediction per image) or of ``tools/infer.py`` (``OUT_DIR/vis/``).

    python tools/analysis_tools/detection_sheet.py DIR|IMAGE [...] --out sheet.jpg [--num 6] [--width 640]
                                                   [--columns 2]

The pictures (``.jpg``/``.jpeg``/``.png`` in the directories, and the files given) are taken in name order
(a name in several directories from the last one: the newest of ``WORK_DIR/*/show``); ``--num`` of them,
evenly spaced over that order, so the sheet shows a sample, not a choice. Each is scaled
to ``--width`` pixels wide (photos of different sizes line up), ``--columns`` per row.
"""
import argparse
import glob
import os.path as osp
import sys

import numpy as np

from fcos_plugin.analysis import detection_sheet

EXTENSIONS = ('.jpg', '.jpeg', '.png')


def parse_args():
    p = argparse.ArgumentParser(description='Put detection pictures into one sheet')
    p.add_argument('inputs', nargs='+', help='picture files or directories of pictures')
    p.add_argument('--out', required=True, help='the sheet to write (.jpg or .png)')
    p.add_argument('--num', type=int, default=6, help='how many pictures (evenly spaced in name order)')
    p.add_argument('--width', type=int, default=None, help='scale each picture to this width in pixels')
    p.add_argument('--columns', type=int, default=1, help='pictures per row')
    return p.parse_args()


def pictures_of(inputs: list[str]) -> list[str]:
    """The picture files named or inside the named directories, sorted by file name. A name found in
    several of them is taken from the last one given (``WORK_DIR/*/show`` of several test runs: the
    newest)."""
    by_name = {}
    for path in inputs:
        if osp.isdir(path):
            found = sorted(p for p in glob.glob(osp.join(path, '*')) if p.lower().endswith(EXTENSIONS))
        elif osp.isfile(path):
            found = [path]
        else:
            raise SystemExit(f'detection_sheet: {path} is neither a file nor a directory')
        by_name.update({osp.basename(p): p for p in found})
    return [by_name[name] for name in sorted(by_name)]


def main():
    args = parse_args()
    if args.num < 1:
        raise SystemExit('detection_sheet: --num must be >= 1')
    pictures = pictures_of(args.inputs)
    if not pictures:
        raise SystemExit(f'detection_sheet: no pictures in {" ".join(args.inputs)}')
    indices = np.unique(np.linspace(0, len(pictures) - 1, min(args.num, len(pictures))).round().astype(int))
    chosen = [pictures[i] for i in indices]
    try:
        sheet = detection_sheet(chosen, args.out, width=args.width, columns=args.columns, jpeg_quality=85)
    except (OSError, ValueError) as e:
        raise SystemExit(str(e)) from None
    for p in chosen:
        print(p)
    print(f'{len(chosen)} of {len(pictures)} pictures -> {args.out} ({sheet.shape[1]}x{sheet.shape[0]})')


if __name__ == '__main__':
    sys.exit(main())
