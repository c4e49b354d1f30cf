#!/usr/bin/env python
"""Same-budget comparison on the demo data: our detector against mmdet's own.

    .venv/bin/python benchmarks/bench_demo_peers.py [--iters 600] [--val-interval 150] [--only NAME ...]
    .venv/bin/python benchmarks/bench_demo_peers.py --plot-only      # table and picture from earlier runs
    .venv/bin/python benchmarks/bench_demo_peers.py --write          # ... and the table into RESULTS.md

Every model is trained by ``tools/train.py`` on ``data/demo`` (``bash tools/run_demo.sh`` makes it)
with the same input size (320x320), pipeline, batch (8), number of iterations, warm-up and cosine
decay and seed, and validated on the demo val set every ``--val-interval`` iterations; those
validations are the budget points. Training CPU-minutes at a budget point are the summed
per-iteration times of mmengine's log up to it (data waiting included, validation excluded), so a
model is charged for what its own iterations cost on this machine.

Models (all from scratch except where named):

* ``fcos_effb0_demo`` -- ours, from the Lite0 ImageNet weights (the demo default), and from scratch
  (then with no stage frozen);
* ``fcos_effb0_demo_classic-assign`` -- ours with classic FCOS targets instead of dynamic assignment;
* ``fcos_r18_demo`` -- mmdet's stock ``FCOSHead`` (GN, 2x64 towers) on a ResNet-18 + FPN;
* ``rtmdet_tiny_demo`` -- mmdet's RTMDet-tiny with its own optimizer (AdamW 0.004) and EMA.

The budget points are validations inside one run (one cosine schedule per model), not separate runs
per budget: a run stopped earlier with its own decayed schedule would score somewhat higher at the
early points. Results: Markdown on stdout and ``benchmarks/demo_peers.png``; with ``--write`` the
section "Same budget as mmdet's own detectors" of ``benchmarks/RESULTS.md`` gets the generated part
(command, machine facts of the training runs, table, picture; the commentary under it is kept). Every
model must have a run: a table with a missing model is refused rather than written.
"""
from __future__ import annotations

import argparse
import glob
import os
import os.path as osp
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = "## Same budget as mmdet's own detectors (demo data)"
END_MARK = '<!-- end of bench_demo_peers.py output; commentary below is kept by --write -->'
PEERS = {
    'fcos_effb0_demo (Lite0 weights)': ('configs/fcos_effb0_demo.py', []),
    # from scratch nothing may stay frozen at its random initialisation
    'fcos_effb0_demo (scratch)': ('configs/fcos_effb0_demo.py', ['model.backbone.init_cfg=None',
                                                                 'model.backbone.frozen_stages=-1']),
    'fcos_effb0_demo classic-assign (Lite0)': ('configs/fcos_effb0_demo_classic-assign.py', []),
    'mmdet FCOS-R18 GN head (scratch)': ('configs/fcos_r18_demo.py', []),
    'mmdet RTMDet-tiny (scratch)': ('configs/rtmdet_tiny_demo.py', []),
}


def slug(name: str) -> str:
    return ''.join(c if c.isalnum() else '_' for c in name).strip('_').lower()


def train(name: str, work_dir: str, data_root: str, iters: int, val_interval: int) -> None:
    config, extra = PEERS[name]
    opts = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={val_interval}',
            f'default_hooks.checkpoint.interval={val_interval}', 'default_hooks.checkpoint.save_best=None',
            'default_hooks.checkpoint.max_keep_ckpts=1', 'train_dataloader.batch_size=8',
            'randomness.seed=0', 'randomness.deterministic=True',
            f'param_scheduler.1.end={iters}', f'param_scheduler.1.T_max={iters}',
            *[f'{k}_dataloader.dataset.data_root={data_root}' for k in ('train', 'val', 'test')], *extra]
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'train.py'), osp.join(REPO, config),
                    '--work-dir', work_dir, '--cfg-options', *opts], check=True, cwd=REPO)


def curve(work_dir: str) -> list[tuple[int, float, float, float]]:
    """``(iteration, training CPU-minutes, bbox mAP, mAP_50)`` at every validation of the newest
    run in ``work_dir``, starting from (0, 0, 0, 0)."""
    logs = sorted(glob.glob(osp.join(work_dir, '2*', 'vis_data', 'scalars.json')))
    if not logs:
        raise SystemExit(f'no training log under {work_dir}')
    from fcos_plugin.analysis import read_scalars
    train, val = read_scalars(logs[-1])
    points, seconds, last_iter, k = [(0, 0.0, 0.0, 0.0)], 0.0, 0, 0
    for r in train:  # r['time']: mean seconds per iteration of the window (last_iter, r['iter']]
        while k < len(val) and val[k]['iter'] <= r['iter']:  # a validation inside this window
            at = val[k]['iter']
            points.append((at, (seconds + r['time'] * (at - last_iter)) / 60, val[k]['coco/bbox_mAP'],
                           val[k]['coco/bbox_mAP_50']))
            k += 1
        seconds += r['time'] * (r['iter'] - last_iter)
        last_iter = r['iter']
    return points


def table(curves: dict[str, list[tuple[int, float, float, float]]]) -> list[str]:
    """The Markdown table: one row per model, one column per budget point (iterations), then s/iteration."""
    budgets = sorted({pt[0] for pts in curves.values() for pt in pts[1:]})
    lines = ['| model | ' + ' | '.join(f'{b} it' for b in budgets) + ' | s/iteration |',
             '|---|' + '---|' * (len(budgets) + 1)]
    for name, pts in curves.items():
        by_iter = {pt[0]: pt for pt in pts}
        cells = [f'{by_iter[b][2]:.3f} ({by_iter[b][1]:.1f} min)' if b in by_iter else '-' for b in budgets]
        rate = 60 * pts[-1][1] / pts[-1][0] if pts[-1][0] else float('nan')
        lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {rate:.2f} |')
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--iters', type=int, default=600)
    p.add_argument('--val-interval', type=int, default=150)
    p.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo') + '/')
    p.add_argument('--work-root', default=osp.join(REPO, 'work_dirs', 'demo_peers'))
    p.add_argument('--only', nargs='+', choices=list(PEERS), help='train only these (default: all)')
    p.add_argument('--plot-only', action='store_true', help='no training: read the work dirs')
    p.add_argument('--out', default=osp.join(REPO, 'benchmarks', 'demo_peers.png'))
    p.add_argument('--write', action='store_true', help='put the table into benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    machine_file = osp.join(args.work_root, 'machine.md')
    if not args.plot_only:
        before = machine_facts()
        for name in args.only or PEERS:
            train(name, osp.join(args.work_root, slug(name)), args.data_root, args.iters, args.val_interval)
        os.makedirs(args.work_root, exist_ok=True)
        with open(machine_file, 'w') as f:  # the training runs' machine, for later --plot-only
            f.write(markdown_line(before) + '\n')
    machine = open(machine_file).read().strip() if osp.isfile(machine_file) else \
        'Machine: not recorded (runs made before bench_demo_peers.py recorded it).'
    curves = {name: curve(osp.join(args.work_root, slug(name))) for name in PEERS
              if glob.glob(osp.join(args.work_root, slug(name), '2*', 'vis_data', 'scalars.json'))}
    if not curves:
        raise SystemExit(f'no training runs under {args.work_root}: run without --plot-only first')
    lines = table(curves)
    print(machine + '\n\n' + '\n'.join(lines))
    missing = [name for name in PEERS if name not in curves]
    if args.write:
        if missing:
            raise SystemExit(f'not written: no run for {", ".join(missing)} under {args.work_root}')
        from results_md import write_section
        picture = osp.relpath(args.out, osp.join(REPO, 'benchmarks'))
        text = '\n'.join([
            SECTION, '',
            f'`.venv/bin/python benchmarks/bench_demo_peers.py --write` ({time.strftime("%Y-%m-%d")}): every '
            'model trained by `tools/train.py` on `data/demo`, same 320x320 pipeline, batch 8, '
            f'{args.iters} iterations, warm-up and cosine decay, seed 0, deterministic; validated on the '
            f'demo val images every {args.val_interval} iterations (the budget points, inside one run per '
            'model). '
            "CPU-minutes are the summed per-iteration times from each run's own log (validation excluded). "
            'Cell: bbox mAP (training CPU-minutes so far).', '',
            machine, '', *lines, '', f'![mAP against CPU-minutes]({picture})'])
        print(f'written to {write_section(SECTION, text, END_MARK)}')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, pts in curves.items():
        ax.plot([pt[1] for pt in pts], [pt[2] for pt in pts], marker='o', label=name)
    ax.set_xlabel('training time, CPU minutes on 2 cores (validation excluded)')
    ax.set_ylabel('bbox mAP (demo val)')
    ax.set_title('Demo data, same iterations (batch 8, 320x320), seed 0')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f'\npicture: {args.out}')


if __name__ == '__main__':
    main()
