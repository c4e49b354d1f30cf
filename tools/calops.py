#!/usr/bin/env python
"""HAT-style alias of ``tools/analysis_tools/get_flops.py``: same code path, HAT's flag names.

    python tools/calops.py --config CONFIG --input-shape "1,3,512,512" [--max-depth 3]

is ``python tools/analysis_tools/get_flops.py CONFIG --batch 1 --shape 512 512 [--max-depth 3]``:
the flags are translated and get_flops's ``main`` runs (same table, totals and exit status).
"""
from __future__ import annotations

import argparse
import os.path as osp
import runpy
import sys

GET_FLOPS = osp.join(osp.dirname(osp.abspath(__file__)), 'analysis_tools', 'get_flops.py')


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description='Count params and FLOPs of a detector (HAT calops; '
                                'alias of tools/analysis_tools/get_flops.py)')
    p.add_argument('--config', required=True)
    p.add_argument('--input-shape', default='1,3,512,512', help='N,C,H,W')
    p.add_argument('--max-depth', type=int, default=3)
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.input_shape.split(','))
    if len(shape) != 4 or shape[1] != 3:
        p.error('--input-shape must be N,3,H,W, e.g. "1,3,512,512"')
    n, _, h, w = shape
    get_flops = runpy.run_path(GET_FLOPS)  # a tools/ script, not a package module: no sys.path hack
    return get_flops['main']([args.config, '--batch', str(n), '--shape', str(h), str(w),
                              '--max-depth', str(args.max_depth)])


if __name__ == '__main__':
    sys.exit(main())
