#!/usr/bin/env python
"""The demo recipe's optimizer: SGD (the COCO recipe's family) against AdamW, at the same point of the
same schedule.

    .venv/bin/python benchmarks/bench_demo_optimizer.py [--work-dir work_dirs/bench_demo_optimizer]
        [--data-root data/demo/] [--write]

Trains ``configs/fcos_effb0_demo_sgd.py`` and ``configs/fcos_effb0_demo.py`` (identical but for the
optimizer; seed 0, deterministic) with ``tools/train.py``, each on its full 600-iteration schedule and
stopped after its first validation (iteration 150) by mmengine's own ``EarlyStoppingHook``
(``stopping_threshold=-1``: any mAP stops it), added to the config's ``custom_hooks`` in a generated
child config. From each run's ``scalars.json`` it reads the last logged training record before the
validation (loss terms, and the assignment's ``pos_iou`` that ``TunedFCOSHead`` logs) and the val bbox
mAP. The AdamW row is the main command's run up to its first validation, so its mAP is the first point of
its curve. Prints the table and the machine (CPU, load before and after); ``--write`` puts them into
benchmarks/RESULTS.md, "Demo recipe: the optimizer" (commentary below the generated part kept).
About 2 x 3.5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import datetime
import os
import os.path as osp
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '## Demo recipe: the optimizer'
END_MARK = '<!-- end of bench_demo_optimizer.py output; commentary below is kept by --write -->'
RUNS = {  # row label -> config
    'SGD, momentum 0.9, wd 1e-4 (0.02)': 'configs/fcos_effb0_demo_sgd.py',
    'AdamW, wd 0.05 (0.002; the demo config)': 'configs/fcos_effb0_demo.py',
}


def stopped_config(config: str, out_dir: str) -> str:
    """A child of ``config`` whose run stops after its first validation (mmengine's EarlyStoppingHook)."""
    from mmengine.config import Config
    hooks = list(Config.fromfile(osp.join(REPO, config)).get('custom_hooks', []))
    hooks.append(dict(type='EarlyStoppingHook', monitor='coco/bbox_mAP', stopping_threshold=-1.0))
    path = osp.join(out_dir, 'stop_after_first_val_' + osp.basename(config))
    with open(path, 'w') as f:
        f.write(f'_base_ = [{osp.join(REPO, config)!r}]\ncustom_hooks = {hooks!r}\n')
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'bench_demo_optimizer'))
    p.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo') + '/')
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script

    from fcos_plugin.analysis.reports import read_scalars, training_log
    before = machine_facts()
    os.makedirs(args.work_dir, exist_ok=True)
    rows = ['| optimizer (lr) | loss at iteration {it}: total (cls / box / centerness) '
            '| IoU of the positives at {it} | val bbox mAP at {val} of 600 | wall s |',
            '|---|---|---|---|---|']
    at = None
    for label, config in RUNS.items():
        work = osp.join(args.work_dir, osp.splitext(osp.basename(config))[0])
        cmd = [sys.executable, osp.join(REPO, 'tools', 'train.py'), stopped_config(config, args.work_dir),
               '--work-dir', work, '--cfg-options',
               *[f'{k}_dataloader.dataset.data_root={args.data_root}' for k in ('train', 'val', 'test')]]
        print('$ ' + ' '.join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        train, val = read_scalars(training_log(work))
        first = val[0]
        last = [r for r in train if r.get('iter', r['step']) <= first['iter']][-1]
        at = (last.get('iter', last['step']), first['iter'])
        rows.append(f'| {label} | {last["loss"]:.3f} ({last["loss_cls"]:.3f} / {last["loss_bbox"]:.3f} / '
                    f'{last["loss_centerness"]:.3f}) | {last["pos_iou"]:.3f} | {first["coco/bbox_mAP"]:.3f} '
                    f'| {seconds:.0f} |')
        print(rows[-1], flush=True)
    rows[0] = rows[0].format(it=at[0], val=at[1])
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_demo_optimizer.py --write` ({datetime.date.today()}): the same '
        'model, data, seed (0, deterministic) and 600-iteration schedule (40 warm-up iterations, cosine '
        'decay), only the optimizer changed (`configs/fcos_effb0_demo_sgd.py` against '
        '`configs/fcos_effb0_demo.py`); each run by `tools/train.py` and stopped after its first validation '
        "(mmengine's `EarlyStoppingHook`). Loss and IoU: the last logged training record before the "
        'validation (the IoU of the positives with their object, logged by `TunedFCOSHead`).',
        '', markdown_line(before), '', *rows, ''])
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
