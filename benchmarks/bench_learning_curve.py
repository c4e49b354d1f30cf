#!/usr/bin/env python
"""Demo-data learning curve: bbox mAP vs CPU minutes for fcos_effb0_demo from Lite0 ImageNet weights and
from scratch, as a picture (benchmarks/learning_curve.png).

    .venv/bin/python benchmarks/bench_learning_curve.py [--epochs 12] [--val-interval 2]
    .venv/bin/python benchmarks/bench_learning_curve.py --lite0-work-dir W1 --scratch-work-dir W2  # plot only

Each run is tools/train.py on data/demo (make it with tools/run_demo.sh or tools/datasets/); the minutes
are the training log's cumulative iteration time (validation excluded).
"""
from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import subprocess
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')


def train(work_dir: str, epochs: int, val_interval: int, scratch: bool) -> None:
    opts = [f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={val_interval}']
    if scratch:
        opts.append('model.backbone.init_cfg=None')
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), CFG, '--work-dir', work_dir,
                    '--cfg-options', *opts], check=True, cwd=REPO)


def curve(work_dir: str) -> list[tuple[float, float]]:
    """(training minutes, bbox mAP) after each validation."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not logs:
        raise SystemExit(f'no training log under {work_dir}')
    seconds, points, last_iter = 0.0, [(0.0, 0.0)], 0
    with open(logs[-1]) as f:
        for line in f:
            r = json.loads(line)
            if 'loss' in r:  # logged every `interval` iterations with the window's mean time
                seconds += r['time'] * (r['iter'] - last_iter)
                last_iter = r['iter']
            if 'coco/bbox_mAP' in r:
                points.append((seconds / 60, r['coco/bbox_mAP']))
    return points


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--val-interval', type=int, default=2)
    p.add_argument('--lite0-work-dir', default=None)
    p.add_argument('--scratch-work-dir', default=None)
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'learning_curve.png'))
    args = p.parse_args()
    runs = {'Lite0 ImageNet weights': args.lite0_work_dir, 'from scratch': args.scratch_work_dir}
    for name, work in runs.items():
        if work is None:
            work = runs[name] = osp.join(REPO, 'work_dirs', 'learning_curve',
                                         'scratch' if 'scratch' in name else 'lite0')
            train(work, args.epochs, args.val_interval, scratch='scratch' in name)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    print('| run | CPU minutes | bbox mAP |\n|---|---|---|')
    for name, work in runs.items():
        pts = curve(work)
        ax.plot([m for m, _ in pts], [a for _, a in pts], marker='o', label=name)
        for m, a in pts[1:]:
            print(f'| {name} | {m:.1f} | {a:.3f} |')
    ax.set_xlabel('training time (CPU minutes, 2 cores)')
    ax.set_ylabel('bbox mAP (demo val)')
    ax.set_title('fcos_effb0_demo on the built-in demo data')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f'picture: {args.out}')


if __name__ == '__main__':
    main()
