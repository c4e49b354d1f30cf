#!/usr/bin/env python
"""Soak: does a long training leak memory? The demo recipe for 2,000 iterations with 2 DataLoader workers.

    .venv/bin/python benchmarks/bench_soak.py [--config configs/fcos_effb0_demo.py] [--iters 2000]
        [--every 100] [--data-root data/demo/] [--work-dir work_dirs/soak] [--plot-only] [--write]

Trains in this process with mmengine's Runner (as tools/train.py does: same config adapter), validating
every 500 iterations, and records every ``--every`` iterations the resident memory (VmRSS from /proc) of
the main process and of each DataLoader worker (its child processes). Writes ``WORK_DIR/soak.json`` and
``benchmarks/soak_memory.png``, and prints a Markdown table plus the growth from the first record after
warm-up (iteration ``2 * every``) to the last, per process kind. Memory, not time, is measured, so the
numbers stand whatever else the machine runs (the load average is recorded anyway). ``--write`` puts the
table, the growth and the machine (CPU, load before and after) into benchmarks/RESULTS.md, "Soak"
(commentary below the generated part kept); with ``--plot-only`` it rewrites them from the saved run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '## Soak: memory over 2,000 iterations'
END_MARK = '<!-- end of bench_soak.py output; commentary below is kept by --write -->'


def rss_mb(pid: int) -> float:
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    return float('nan')


def children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f'/proc/{pid}/task'):
        try:
            with open(f'/proc/{pid}/task/{task}/children') as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            pass
    return sorted(kids)


def plot(records: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.6))
    its = [r['iter'] for r in records]
    ax.plot(its, [r['main_mb'] for r in records], 'o-', label='main process')
    for k in range(max(len(r['workers_mb']) for r in records)):
        ax.plot(its, [r['workers_mb'][k] if k < len(r['workers_mb']) else float('nan') for r in records],
                's--', label=f'DataLoader worker {k}')
    ax.set_xlabel('iteration')
    ax.set_ylabel('resident memory (MB)')
    ax.set_title('fcos_effb0_demo, 2 workers: memory over a long run')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    p.add_argument('--iters', type=int, default=2000)
    p.add_argument('--every', type=int, default=100)
    p.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo') + '/')
    p.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'soak'))
    p.add_argument('--plot-only', action='store_true', help='redraw from WORK_DIR/soak.json')
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    out_json = osp.join(args.work_dir, 'soak.json')
    picture = osp.join(REPO, 'benchmarks', 'soak_memory.png')
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    if not args.plot_only:
        before = machine_facts()
        from mmengine.config import Config
        from mmengine.hooks import Hook
        from mmengine.runner import Runner

        import fcos_plugin  # noqa: F401
        from fcos_plugin.utils import adapt_cfg_to_machine
        records: list[dict] = []

        class MemoryProbe(Hook):
            priority = 'VERY_LOW'

            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                it = runner.iter + 1
                if it % args.every == 0 or it == 1:
                    main_pid = os.getpid()
                    records.append(dict(iter=it, time=time.time(), main_mb=rss_mb(main_pid),
                                        workers_mb=[rss_mb(k) for k in children(main_pid)],
                                        load=os.getloadavg()[0]))
                    print(f'[soak] iter {it}: main {records[-1]["main_mb"]:.0f} MB, workers '
                          + ', '.join(f'{m:.0f}' for m in records[-1]['workers_mb']) + ' MB', flush=True)

        cfg = Config.fromfile(args.config)
        cfg.work_dir = args.work_dir
        for split in ('train', 'val', 'test'):
            cfg[f'{split}_dataloader'].dataset.data_root = args.data_root
        cfg.train_dataloader.num_workers = 2
        cfg.train_dataloader.persistent_workers = True
        cfg.train_cfg.max_iters = args.iters
        cfg.train_cfg.val_interval = 500
        cfg.param_scheduler[-1].end = args.iters
        cfg.param_scheduler[-1].T_max = args.iters - cfg.param_scheduler[-1].begin
        cfg.default_hooks.checkpoint.interval = 500
        adapt_cfg_to_machine(cfg)
        runner = Runner.from_cfg(cfg)
        runner.register_hook(MemoryProbe())
        runner.train()
        os.makedirs(args.work_dir, exist_ok=True)
        with open(out_json, 'w') as f:
            json.dump(dict(config=args.config, iters=args.iters, every=args.every,
                           date=str(datetime.date.today()), records=records,
                           machine=markdown_line(before)), f, indent=1)
    with open(out_json) as f:
        saved = json.load(f)
    records = saved['records']
    plot(records, picture)
    rows = ['| iteration | main MB | workers MB | load avg |', '|---|---|---|---|']
    for r in records:
        rows.append(f'| {r["iter"]} | {r["main_mb"]:.0f} | ' + ' / '.join(f'{m:.0f}' for m in r['workers_mb'])
                    + f' | {r["load"]:.1f} |')
    every = saved.get('every', args.every)
    base = next(r for r in records if r['iter'] >= 2 * every)
    last = records[-1]
    growth = last['main_mb'] - base['main_mb']
    after_warmup = [r['main_mb'] for r in records if r['iter'] >= base['iter']]
    growth_line = (f'From iteration {base["iter"]} to {last["iter"]}: main process {growth:+.0f} MB '
                   f'({last["main_mb"] / base["main_mb"]:.3f}x), train workers ' + ', '.join(
                       f'{b - a:+.0f} MB' for a, b in zip(base['workers_mb'], last['workers_mb']))
                   + f'; the main process ranged {min(after_warmup):.0f}-{max(after_warmup):.0f} MB over '
                   'those records.')
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_soak.py --iters {saved["iters"]} --write` '
        f'({saved.get("date", "date not recorded")}): `{osp.relpath(saved["config"], REPO)}` for '
        f'{saved["iters"]:,} iterations in one process, 2 persistent train workers, validation and a '
        'checkpoint every 500 iterations. Resident memory (VmRSS) of the main process and of its child '
        f'processes at iteration 1 and every {every}; after the first validation the two persistent val '
        'workers appear as well (their RSS includes pages shared copy-on-write with the main process). '
        'Picture: `benchmarks/soak_memory.png`.', '',
        saved.get('machine', 'Machine: not recorded by this (older) run'), '',
        *rows, '', growth_line, ''])
    print(f'picture: {picture}')
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
