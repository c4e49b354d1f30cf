#!/usr/bin/env python
"""Verify a packed COCO split: counts against its manifest, every record's checksum, every image decodes.

    python tools/datasets/verify_pack.py data/mscoco/val_lmdb

Prints a progress bar (stderr) and a summary (stdout) listing every bad record by key and image id.
Exit status: 0 the pack is intact, 1 it is damaged (bad records or counts listed, or it cannot be opened:
the error says why), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys

from fcos_plugin.datasets.lmdb_format import LmdbFormatError
from fcos_plugin.datasets.pack_verify import summarize, verify_pack


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('pack', metavar='DIR', help='a packed split directory, e.g. data/mscoco/val_lmdb')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = verify_pack(args.pack, progress=not args.no_progress)
    except LmdbFormatError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    for line in summarize(result):
        print(line)
    return 0 if result.ok else 1


if __name__ == '__main__':
    sys.exit(main())
