#!/usr/bin/env python
"""Where a training iteration of the demo detector spends its time, and what layout/size buy.

    .venv/bin/python benchmarks/bench_demo_speed.py [--config configs/fcos_effb0_demo.py] [--iters 5]
        [--write]

One real batch of the config's train dataloader (data/demo must be packed: tools/run_demo.sh) is fed
through forward + loss + backward + SGD step, timed per stage, for several variants of the same model
in one process: the previous demo setting (inputs padded to 384, NCHW), inputs padded to 32 only
(320x320), 320 in ``channels_last`` (what :class:`fcos_plugin.engine.ChannelsLastHook` turns on), and
that with the stem and stages 0-1 frozen (the demo config's ``frozen_stages=2``).
Prints a Markdown table with ratios against the first variant and the machine (CPU, load before and
after); ``--write`` puts them into benchmarks/RESULTS.md, "Demo recipe: where a training iteration's time
goes" (commentary below the generated part kept).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os.path as osp
import time

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

import fcos_plugin  # noqa: F401

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = "## Demo recipe: where a training iteration's time goes"
END_MARK = '<!-- end of bench_demo_speed.py output; commentary below is kept by --write -->'
STAGES = dict(preprocess='preprocess s', backbone_neck='backbone + neck forward s', head='head forward s',
              assign_loss='assignment + loss s', backward_step='backward + step s', total='total s/iteration')


def stage_times(model, data: dict, iters: int) -> dict[str, float]:
    """Median seconds per stage over ``iters`` steps (after one warm-up step)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-5, momentum=0.9)
    model.train()
    rows = []
    for i in range(iters + 1):
        t0 = time.perf_counter()
        batch = model.data_preprocessor(copy.copy(data), True)
        t1 = time.perf_counter()
        feats = model.extract_feat(batch['inputs'])
        t2 = time.perf_counter()
        outs = model.bbox_head(feats)
        t3 = time.perf_counter()
        gts = [s.gt_instances for s in batch['data_samples']]
        metas = [s.metainfo for s in batch['data_samples']]
        losses = model.bbox_head.loss_by_feat(*outs, gts, metas)
        loss, _ = model.parse_losses(losses)
        t4 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        opt.step()
        t5 = time.perf_counter()
        if i:
            rows.append(dict(preprocess=t1 - t0, backbone_neck=t2 - t1, head=t3 - t2,
                             assign_loss=t4 - t3, backward_step=t5 - t4, total=t5 - t0))
    return {k: float(torch.tensor([r[k] for r in rows]).median()) for k in rows[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = Config.fromfile(args.config)
    init_default_scope('mmdet')
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    data = next(iter(Runner.build_dataloader(cfg.train_dataloader)))
    batch = len(data['inputs'])
    from mmdet.registry import MODELS
    variants = {
        '320 padded to 384 (`pad_size_divisor=128`), NCHW': (128, False, -1),
        'padded to 32 only (320x320)': (32, False, -1),
        '+ `channels_last` (`ChannelsLastHook`)': (32, True, -1),
        '+ stem and stages 0-1 frozen at their ImageNet weights (the demo config)': (32, True, 2),
    }
    results = {}
    for name, (divisor, channels_last, frozen) in variants.items():
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.data_preprocessor.pad_size_divisor = divisor
        model_cfg.backbone.frozen_stages = frozen
        model_cfg.backbone.init_cfg = None  # speed does not depend on the weights
        torch.manual_seed(0)
        model = MODELS.build(model_cfg)
        model.init_weights()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        results[name] = stage_times(model, data, args.iters)
        print(f'{name}: {results[name]["total"]:.2f} s/iteration', flush=True)
    base = next(iter(results.values()))['total']
    rows = ['| variant | ' + ' | '.join(STAGES.values()) + ' | speed-up |',
            '|---|' + '---|' * (len(STAGES) + 1)]
    for name, r in results.items():
        rows.append(f'| {name} | ' + ' | '.join(f'{r[s]:.3f}' for s in STAGES)
                    + f' | {base / r["total"]:.2f}x |')
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_demo_speed.py --iters {args.iters} --write` '
        f'({datetime.date.today()}): one real batch of {batch} images of the demo train set '
        f'(`{osp.relpath(args.config, REPO)}`\'s dataloader) through data preprocessing, forward, assignment '
        f'and loss, backward and an SGD step, {args.threads} threads, median of {args.iters} steps after one '
        'warm-up; the same model in one process, each row changing one thing from the row above.',
        '', markdown_line(before), '', *rows, ''])
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
