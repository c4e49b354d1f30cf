#!/usr/bin/env python
"""Model cost: params/FLOPs per module at 512x512 against EfficientDet-D0, CPU training images/s and
inference latency against mmdet's stock FCOS-R50, all measured in this run.

    .venv/bin/python benchmarks/bench_model.py [--threads 2] [--iters 10] [--write]

Prints Markdown and the machine it ran on; ``--write`` puts both tables into benchmarks/RESULTS.md
("Model cost at 512x512" and "CPU speed at 512x512 vs mmdet's stock FCOS-R50", the commentary under each
generated part kept).
"""
from __future__ import annotations

import argparse
import datetime
import os.path as osp
import time

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import fcos_plugin  # noqa: F401
from fcos_plugin.analysis import detector_complexity

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {
    'fcos_effb0 (HAT recipe)': osp.join(REPO, 'configs', 'fcos_effb0.py'),
    'fcos_effb0-sep': osp.join(REPO, 'configs', 'fcos_effb0-sep.py'),
    'fcos_effb0_swish-se': osp.join(REPO, 'configs', 'fcos_effb0_swish-se.py'),
}
R50 = 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py'  # mmdet's stock config, shipped in its wheel
EFFDET_D0 = dict(params=3.9e6, flops=2.54e9, ap=34.3)
COST_SECTION = '## Model cost at 512x512'
SPEED_SECTION = "## CPU speed at 512x512 vs mmdet's stock FCOS-R50 (same run, 2 threads)"
SECTIONS = (COST_SECTION, SPEED_SECTION)
END_MARK = '<!-- end of bench_model.py output; commentary below is kept by --write -->'


def build(cfg_path: str):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(cfg_path)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    return model


def train_speed(model, size: int, batch: int, iters: int) -> float:
    """Images/s of forward+backward+SGD step on random images with a few random boxes each."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    inputs = torch.rand(batch, 3, size, size, generator=g) * 255
    samples = []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * size * 0.6
        wh = torch.rand(6, 2, generator=g) * size * 0.35 + 16
        s = DetDataSample(metainfo=dict(img_shape=(size, size), pad_shape=(size, size),
                                        batch_input_shape=(size, size), ori_shape=(size, size),
                                        scale_factor=(1.0, 1.0)))
        s.gt_instances = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                                      labels=torch.randint(0, 6, (6,), generator=g))
        samples.append(s)
    data = dict(inputs=list(inputs.to(torch.uint8)), data_samples=samples)

    def step():
        batch_data = model.data_preprocessor(data, True)
        losses = model(**batch_data, mode='loss')
        loss, _ = model.parse_losses(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - t0)


@torch.no_grad()
def latency_ms(model, size: int, iters: int) -> float:
    model.eval()
    x = torch.rand(1, 3, size, size)
    model._forward(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        model._forward(x)
    return 1000 * (time.perf_counter() - t0) / iters


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    if args.write and (args.size, args.threads) != (512, 2):
        raise SystemExit('error: RESULTS.md records 512x512 on 2 threads; '
                         '--write needs --size 512 --threads 2')
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    torch.set_num_threads(args.threads)
    shape = (1, 3, args.size, args.size)

    cost = ['| model | backbone M / GFLOPs | neck M / GFLOPs | head M / GFLOPs | total params '
            '| total GFLOPs |', '|---|---|---|---|---|---|']
    models = {}
    for name, path in CONFIGS.items():
        model = build(path)
        r = detector_complexity(model, shape)
        models[name] = model
        parts = []
        for part in ('backbone', 'neck', 'bbox_head'):
            n = sum(p.numel() for p in getattr(model, part).parameters())
            parts.append(f'{n / 1e6:.3f} / {r.by_module.get(part, 0) / 1e9:.3f}')
        cost.append(f'| {name} | {" | ".join(parts)} | {r.params / 1e6:.3f} M | {r.flops / 1e9:.3f} |')
    cost.append(f'| EfficientDet-D0 (paper) | | | | {EFFDET_D0["params"] / 1e6:.1f} M | '
                f'{EFFDET_D0["flops"] / 1e9:.2f} |')
    print('\n'.join(cost), flush=True)

    speed = [f'| model | train images/s (batch {args.batch}) | inference ms (batch 1, no NMS) |',
             '|---|---|---|']
    import mmdet
    ref = build(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', R50))
    rows = {'mmdet FCOS-R50 (stock config)': ref,
            'fcos_effb0 (HAT recipe)': models['fcos_effb0 (HAT recipe)'],
            'fcos_effb0-sep': models['fcos_effb0-sep']}
    speeds = {}
    for name, model in rows.items():
        speeds[name] = (train_speed(model, args.size, args.batch, args.iters),
                        latency_ms(model, args.size, args.iters * 2))
        speed.append(f'| {name} | {speeds[name][0]:.2f} | {speeds[name][1]:.0f} |')
        print(speed[-1], flush=True)
    base = speeds['mmdet FCOS-R50 (stock config)']
    ratios = [f'{name}: training {speeds[name][0] / base[0]:.1f}x, inference '
              f'{base[1] / speeds[name][1]:.1f}x as fast as FCOS-R50' for name in list(rows)[1:]]
    machine = markdown_line(before)
    cmd = (f'`.venv/bin/python benchmarks/bench_model.py --iters {args.iters} --write` '
           f'({datetime.date.today()})')
    cost_text = '\n'.join([
        COST_SECTION, '', f'{cmd}. 1 multiply-add = 1 FLOP; every operator counted (BN, activations, pooling '
        'included); pre-processing and NMS excluded. Counted, not timed: the machine does not change them.',
        '', *cost, ''])
    speed_text = '\n'.join([
        SPEED_SECTION, '', f'{cmd}: {args.iters} timed iterations after one warm-up per model, training = '
        f'forward + backward + SGD step on random {args.size}x{args.size} images with 6 boxes each, '
        'inference = network only (no NMS).', '', machine, '', *speed, '', '; '.join(ratios) + '.', ''])
    print('\n' + cost_text + '\n' + speed_text)
    if args.write:
        from results_md import write_section
        write_section(COST_SECTION, cost_text, END_MARK)
        print(f'written to {write_section(SPEED_SECTION, speed_text, END_MARK)}')


if __name__ == '__main__':
    main()
