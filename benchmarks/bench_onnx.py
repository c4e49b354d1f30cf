#!/usr/bin/env python
"""PyTorch eager vs ONNX Runtime float vs ONNX Runtime int8: end-to-end latency on 2 CPU threads at the
demo's 320x320 and at 512x512, and bbox mAP on the demo val set, all measured in one run.

    .venv/bin/python benchmarks/bench_onnx.py --ckpt CKPT [--config configs/fcos_effb0_demo.py]
        [--data-root data/demo/] [--work-dir /tmp/bench_onnx] [--threads 2] [--runs 30] [--rounds 3]
        [--sizes 320 512] [--num-calib 32] [--calib-method MinMax] [--num-images N] [--write]

The checkpoint is exported with ``tools/deploy/export_onnx.py``'s code (dynamic shapes, NMS inside) and
quantized with ``quantize_onnx.py``'s (the int8 network, calibrated on the train set). Latency is the
median of ``--runs`` end-to-end passes on the same real image (the first val image, resized to each size
and normalised by the val pipeline and data preprocessor) -- PyTorch ``model.predict`` (network +
post-processing + NMS) vs one ONNX Runtime ``run`` of the float and the int8 model. Each backend is timed
in blocks of its own (2 warm-up runs, then timed runs), the blocks alternating over ``--rounds`` rounds:
an ONNX Runtime session's idle thread pool keeps spinning after a run and slows whatever runs next, so
run-by-run interleaving measures the neighbours, not the model. The int8 / float ratio is also printed
round by round: this shared 2-core machine drifts by tens of percent over minutes, and the spread of
those paired ratios says how far one run's figure can be trusted. The share of the int8 model's
convolution multiply-adds that ONNX Runtime runs as int8 kernels is read from its optimized graph
(``fcos_plugin.deploy.inspection``). The machine (CPU model and flags, load before and after) is printed
with the table; ``--write`` puts it into benchmarks/RESULTS.md under "## ONNX export and int8" (the
commentary below the generated part is kept).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os.path as osp

import numpy as np
import torch
from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
from results_md import publish

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

SECTION = '## ONNX export and int8'
#: Ends the generated part of the section: what follows it (commentary) is kept by --write.
END_MARK = '<!-- end of bench_onnx.py output; commentary below is kept by --write -->'
BACKENDS = ('PyTorch eager', 'ORT float', 'ORT int8')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ckpt', required=True, help='checkpoint of --config')
    parser.add_argument('--config', default=osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo'),
                        help='demo LMDB pack (train_lmdb for calibration, val_lmdb for mAP)')
    parser.add_argument('--work-dir', default='/tmp/bench_onnx')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=30, help='timed runs per backend and size')
    parser.add_argument('--rounds', type=int, default=3, help='alternating blocks the runs are split into')
    parser.add_argument('--sizes', type=int, nargs='+', default=[320, 512], help='square input sides')
    parser.add_argument('--num-calib', type=int, default=32)
    parser.add_argument('--calib-method', default='MinMax')
    parser.add_argument('--num-images', type=int, help='evaluate the first N val images only')
    parser.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    before = machine_facts()
    from fcos_plugin.deploy import export_onnx, load_model_cfg, quantize_int8
    from fcos_plugin.deploy.evaluation import (
        evaluate,
        latency_input,
        median_ms,
        ort_session,
        pytorch_model,
        timed_rounds,
    )
    from fcos_plugin.deploy.inspection import conv_kernels, int8_conv_fraction
    torch.set_num_threads(args.threads)
    cfg = load_model_cfg(args.config, data_root=args.data_root)
    quiet = lambda s: None  # noqa: E731
    paths = export_onnx(cfg, args.ckpt, args.work_dir, onnx_name='fcos.onnx', force=True, log=quiet)
    float_model = paths['onnx']
    int8_model = osp.join(args.work_dir, 'fcos_int8.onnx')
    qinfo = quantize_int8(cfg, float_model, int8_model, num_calib=args.num_calib,
                          calibrate_method=args.calib_method, force=True, log=quiet)
    torch_model = pytorch_model(cfg, args.ckpt, float_model)  # as mmdeploy builds it for float_model
    sessions = {name: ort_session(path, args.threads)
                for name, path in (('ORT float', float_model), ('ORT int8', int8_model))}

    lat, int8_share, round_ratios = {}, {}, {}
    for side in args.sizes:
        x, samples = latency_input(cfg, float_model, shape=(side, side))
        x_np = x.numpy()
        fns = {'PyTorch eager':
               lambda x=x, s=samples: torch_model.predict(x, copy.deepcopy(s), rescale=False)}
        for name, session in sessions.items():
            fns[name] = lambda session=session, x_np=x_np: session.run(None, {'input': x_np})
        times = timed_rounds(fns, args.runs, warmup=2, rounds=args.rounds)
        lat[side] = median_ms(times)
        # int8 vs float round by round: both blocks of a round ran minutes apart at most, so the
        # machine's drift (it is shared) shows as the spread of these, not as a shifted median
        round_ratios[side] = [float(np.median(f) / np.median(q))
                              for f, q in zip(times['ORT float'], times['ORT int8'])]
        int8_share[side] = int8_conv_fraction(conv_kernels(int8_model, x_np))
        print(f'{side}x{side}: ' + ', '.join(f'{k} {v:.1f} ms' for k, v in lat[side].items()), flush=True)

    maps = {'PyTorch eager': evaluate(cfg, torch_model, paths['deploy_cfg'], num_images=args.num_images,
                                      log=quiet),
            'ORT float': evaluate(cfg, float_model, num_images=args.num_images, log=quiet),
            'ORT int8': evaluate(cfg, int8_model, num_images=args.num_images, log=quiet)}
    machine = markdown_line(before)

    n_val = 'all' if args.num_images is None else f'the first {args.num_images}'
    rows = ['| input | backend | latency ms (median) | vs PyTorch eager | vs ORT float |',
            '|---|---|---|---|---|']
    for side, row in lat.items():
        for name in BACKENDS:
            rows.append(f'| {side}x{side} | {name} | {row[name]:.1f} | '
                        f'{row["PyTorch eager"] / row[name]:.2f}x | {row["ORT float"] / row[name]:.2f}x |')
    map_rows = ['| backend | bbox mAP | mAP_50 | mAP loss vs PyTorch (points) |', '|---|---|---|---|']
    ref = maps['PyTorch eager'].get('coco/bbox_mAP', float('nan'))
    for name in BACKENDS:
        m = maps[name]
        map_rows.append(f'| {name} | {m.get("coco/bbox_mAP", float("nan")):.3f} | '
                        f'{m.get("coco/bbox_mAP_50", float("nan")):.3f} | '
                        f'{100 * (ref - m.get("coco/bbox_mAP", float("nan"))):.1f} |')
    cmd = (f'.venv/bin/python benchmarks/bench_onnx.py --ckpt {args.ckpt} --threads {args.threads} '
           f'--runs {args.runs} --rounds {args.rounds} --sizes {" ".join(map(str, args.sizes))} '
           f'--num-calib {args.num_calib} --calib-method {args.calib_method}')
    text = '\n'.join([
        SECTION, '',
        f'`{cmd}` ({datetime.date.today()}).', '', machine, '',
        f'Model: {osp.basename(args.config)}, exported end to end (NMS inside, dynamic shapes). int8: ONNX '
        f'Runtime static QDQ quantization of the network (per-channel symmetric int8 weights, uint8 '
        f'activations, {args.calib_method} ranges over {qinfo["calibration_images"]} train images'
        f'{", 7-bit weights" if qinfo["reduce_range"] else ""}; {qinfo["quantized"]} nodes int8, the '
        f"head's output convolutions and the post-processing float). Share of the int8 model's "
        'convolution multiply-adds that ONNX Runtime runs as int8 kernels: '
        + ', '.join(f'{100 * v:.1f} % at {k}x{k}' for k, v in int8_share.items()) + '.', '',
        f'Latency: end to end (network + decoding + NMS), {args.threads} threads, median of {args.runs} '
        f'runs per backend and size, each backend in blocks of its own over {args.rounds} alternating '
        'rounds after 2 warm-up runs per block; the first val image resized to each size.', '',
        *rows, '',
        f'ORT int8 vs ORT float in each of the {args.rounds} rounds (median of the round\'s runs, '
        'float / int8): ' + '; '.join(
            f'{k}x{k}: ' + ', '.join(f'{r:.2f}x' for r in v) + f' (lowest {min(v):.2f}x)'
            for k, v in round_ratios.items()) + '.', '',
        f'bbox mAP on {n_val} demo val images at the config\'s input size:', '', *map_rows, ''])
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
