#!/usr/bin/env python
"""Demo-data learning curve: bbox mAP vs CPU minutes for fcos_effb0_demo from Lite0 ImageNet weights and
from scratch, as a picture (benchmarks/learning_curve.png).

    .venv/bin/python benchmarks/bench_learning_curve.py [--epochs 12] [--val-interval 2]
    .venv/bin/python benchmarks/bench_learning_curve.py --lite0-work-dir W1 --scratch-work-dir W2  # plot only

Each run is tools/train.py on data/demo (make it with tools/run_demo.sh or tools/datasets/). Minutes are
iterations times the uncontended seconds per iteration read from the training logs (validation excluded):
the two runs cost the same per iteration, and windows slowed by other jobs on the machine are left out.
"""
from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import subprocess
import sys

import numpy as np

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')


def train(work_dir: str, epochs: int, val_interval: int, scratch: bool) -> None:
    opts = [f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={val_interval}']
    if scratch:
        opts.append('model.backbone.init_cfg=None')
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), CFG, '--work-dir', work_dir,
                    '--cfg-options', *opts], check=True, cwd=REPO)


def curve(work_dir: str) -> tuple[list[tuple[int, float]], list[float], int]:
    """(epoch, bbox mAP) after each validation, starting at (0, 0); the logged mean seconds per
    iteration of each logging window (validation excluded); iterations per epoch."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not logs:
        raise SystemExit(f'no training log under {work_dir}')
    points, window_times, train = [(0, 0.0)], [], []
    with open(logs[-1]) as f:
        for line in f:
            r = json.loads(line)
            if 'loss' in r:  # logged every `interval` iterations with the window's mean time
                window_times.append(r['time'])
                train.append((r['epoch'], r['iter']))
            if 'coco/bbox_mAP' in r:  # a validation record's step is its epoch
                points.append((r['step'], r['coco/bbox_mAP']))
    (e0, i0), (e1, i1) = train[0], train[-1]
    if e1 == e0:
        raise SystemExit(f'{work_dir}: need training logs from two epochs')
    return points, window_times, (i1 - i0) // (e1 - e0)


def quiet_seconds_per_iter(window_times: list[float]) -> float:
    """Both runs train the same network on the same data, so they cost the same per iteration; a
    window slowed by other jobs on the machine is slower, never faster. The uncontended rate is the
    median of the windows within 15% of the fastest one."""
    fastest = min(window_times)
    return float(np.median([t for t in window_times if t <= 1.15 * fastest]))


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
    curves = {name: curve(work) for name, work in runs.items()}
    rate = quiet_seconds_per_iter([t for _, times, _ in curves.values() for t in times])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    print(f'uncontended training cost: {rate:.2f} s/iteration (2 cores)\n')
    print('| run | epoch | CPU minutes | bbox mAP |\n|---|---|---|---|')
    for name, (pts, _, iters_per_epoch) in curves.items():
        minutes = [epoch * iters_per_epoch * rate / 60 for epoch, _ in pts]
        ax.plot(minutes, [a for _, a in pts], marker='o', label=name)
        for (epoch, a), m in zip(pts[1:], minutes[1:]):
            print(f'| {name} | {epoch} | {m:.1f} | {a:.3f} |')
    ax.set_xlabel(f'training time, CPU minutes on 2 cores ({rate:.1f} s/iteration)')
    ax.set_ylabel('bbox mAP (demo val)')
    ax.set_title('fcos_effb0_demo on the built-in demo data')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f'picture: {args.out}')


if __name__ == '__main__':
    main()
