#!/usr/bin/env python
"""HAT-style entry point: ``python tools/calops.py --config CONFIG --input-shape "1,3,512,512"``.

Same counts as ``tools/analysis_tools/get_flops.py`` (which it calls).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), 'analysis_tools'))
from get_flops import run  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='Count params and FLOPs of a detector (HAT calops)')
    p.add_argument('--config', required=True)
    p.add_argument('--input-shape', default='1,3,512,512', help='N,C,H,W')
    p.add_argument('--max-depth', type=int, default=3)
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.input_shape.split(','))
    if len(shape) != 4:
        p.error('--input-shape must be N,C,H,W, e.g. "1,3,512,512"')
    return run(args.config, shape, args.max_depth)


if __name__ == '__main__':
    sys.exit(main())
