#!/usr/bin/env python
"""Model cost: params/FLOPs per module at 512x512 against EfficientDet-D0, CPU training images/s and
inference latency against mmdet's stock FCOS-R50, all measured in this run.

    .venv/bin/python benchmarks/bench_model.py [--threads 2] [--iters 5]

Prints Markdown; the numbers are copied into benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
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
    p.add_argument('--iters', type=int, default=5)
    p.add_argument('--size', type=int, default=512)
    p.add_argument('--batch', type=int, default=2)
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    torch.set_num_threads(args.threads)
    shape = (1, 3, args.size, args.size)

    print(f'\n## Params and FLOPs at {args.size}x{args.size} (1 multiply-add = 1 FLOP; '
          'pre-processing and NMS excluded)\n')
    print('| model | backbone M / G | neck M / G | head M / G | total params | total GFLOPs |')
    print('|---|---|---|---|---|---|')
    models = {}
    for name, path in CONFIGS.items():
        model = build(path)
        r = detector_complexity(model, shape)
        models[name] = model
        parts = []
        for part in ('backbone', 'neck', 'bbox_head'):
            n = sum(p.numel() for p in getattr(model, part).parameters())
            parts.append(f'{n / 1e6:.3f} / {r.by_module.get(part, 0) / 1e9:.3f}')
        print(f'| {name} | {" | ".join(parts)} | {r.params / 1e6:.3f} M | {r.flops / 1e9:.3f} |')
    print(f'| EfficientDet-D0 (paper) | | | | {EFFDET_D0["params"] / 1e6:.1f} M | '
          f'{EFFDET_D0["flops"] / 1e9:.2f} |')

    print(f'\n## CPU speed at {args.size}x{args.size}, {args.threads} threads (same run)\n')
    print('| model | train images/s (batch %d) | inference ms (batch 1, no NMS) |' % args.batch)
    print('|---|---|---|')
    import mmdet
    ref = build(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', R50))
    rows = {'mmdet FCOS-R50 (stock config)': ref,
            'fcos_effb0 (HAT recipe)': models['fcos_effb0 (HAT recipe)'],
            'fcos_effb0-sep': models['fcos_effb0-sep']}
    speeds = {}
    for name, model in rows.items():
        speeds[name] = (train_speed(model, args.size, args.batch, args.iters),
                        latency_ms(model, args.size, args.iters * 2))
        print(f'| {name} | {speeds[name][0]:.2f} | {speeds[name][1]:.0f} |', flush=True)
    base = speeds['mmdet FCOS-R50 (stock config)']
    for name in list(rows)[1:]:
        print(f'\n{name} vs FCOS-R50: training {speeds[name][0] / base[0]:.1f}x faster, inference '
              f'{base[1] / speeds[name][1]:.1f}x faster')
    print('\n' + markdown_line(before))


if __name__ == '__main__':
    main()
