#!/usr/bin/env python
"""Where int8 loses accuracy and where its time goes, measured on one checkpoint in one run.

    .venv/bin/python benchmarks/diagnose_int8.py --ckpt CKPT [--config configs/fcos_effb0_demo.py]
        [--data-root data/demo/] [--work-dir /tmp/diagnose_int8] [--threads 2] [--runs 20]
        [--skip-sensitivity] [--skip-calibration] [--write]

1. **Quantization schemes** -- the float model; convolutions only (every other operator float between
   dequantize/quantize pairs, the scheme this project shipped first); the whole network with the head's
   output convolutions float (the default of ``tools/deploy/quantize_onnx.py``); the whole network
   including the head's outputs. For each: bbox mAP on the val set, the share of convolution
   multiply-adds that ONNX Runtime's optimized graph runs as int8 kernels (``QLinearConv``), how many
   convolutions stay float, how many float results are quantized again between int8 kernels
   (``QuantizeLinear`` nodes left in the optimized graph, the input's excluded), end-to-end latency at 320
   and 512 (each model in blocks of its own), and ONNX Runtime's profile per operator type at 320.
2. **Sensitivity** -- the network quantized one block at a time (stem, each backbone stage, the
   BiFPN's input projections and each of its cells, the head towers, the head outputs), everything else
   float: the mAP each block's quantization costs on its own.
3. **Calibration** -- MinMax ranges over 8, 32 and 128 train images, Percentile (99.999) over 32 and 128,
   Entropy over 32.

``--write`` puts the tables into benchmarks/RESULTS.md under "## int8: where accuracy and time go".
"""
from __future__ import annotations

import argparse
import datetime
import os.path as osp

from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
from results_md import publish

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '## int8: where accuracy and time go'
END_MARK = '<!-- end of diagnose_int8.py output; commentary below is kept by --write -->'
MAP = 'coco/bbox_mAP'
#: (label, quantize_int8 keyword arguments)
SCHEMES = (
    ('convolutions only (all of them)', dict(op_types=('Conv',), float_head_outputs=False)),
    ('network, fusion weights multiplied at run time', dict(fold_scales=False)),
    ('network, head outputs float (default)', dict()),
    ('network, head outputs int8 too', dict(float_head_outputs=False)),
)
#: (label, node-name prefixes of the exported graph)
BLOCKS = (
    ('backbone stem', ('/backbone/stem/',)),
    *((f'backbone stage {i}', (f'/backbone/stages.{i}/',)) for i in range(7)),
    ('BiFPN input projections', ('/neck/laterals', '/neck/extra')),
    *((f'BiFPN cell {i}', (f'/neck/cells/cells.{i}/',)) for i in range(3)),
    ('head towers', ('/bbox_head/cls_convs', '/bbox_head/reg_convs')),
)
CALIBRATIONS = [('MinMax', 8), ('MinMax', 32), ('MinMax', 128), ('Percentile', 32), ('Percentile', 128),
                ('Entropy', 32)]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ckpt', required=True)
    parser.add_argument('--config', default=osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo'))
    parser.add_argument('--work-dir', default='/tmp/diagnose_int8')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--num-calib', type=int, default=32)
    parser.add_argument('--skip-sensitivity', action='store_true')
    parser.add_argument('--skip-calibration', action='store_true')
    parser.add_argument('--write', action='store_true')
    return parser.parse_args()


def main():
    args = parse_args()
    before = machine_facts()
    import torch

    from fcos_plugin.deploy import export_onnx, load_model_cfg, quantize_int8
    from fcos_plugin.deploy.evaluation import evaluate, latency_input, median_latency_ms, ort_session
    from fcos_plugin.deploy.inspection import (
        conv_kernels,
        int8_conv_fraction,
        op_time_profile,
        requantizations,
    )
    torch.set_num_threads(args.threads)
    cfg = load_model_cfg(args.config, data_root=args.data_root)
    quiet = lambda s: None  # noqa: E731
    float_model = export_onnx(cfg, args.ckpt, args.work_dir, onnx_name='fcos.onnx', force=True,
                              log=quiet)['onnx']

    def quantize(name: str, **kwargs) -> str:
        out = osp.join(args.work_dir, f'{name}.onnx')
        kwargs.setdefault('num_calib', args.num_calib)
        quantize_int8(cfg, float_model, out, force=True, log=quiet, **kwargs)
        return out

    def mAP(model: str) -> float:
        return evaluate(cfg, model, log=quiet)[MAP]

    inputs = {side: latency_input(cfg, float_model, shape=(side, side))[0].numpy() for side in (320, 512)}
    models = {'float': float_model}
    for i, (label, kwargs) in enumerate(SCHEMES):
        models[label] = quantize(f'scheme{i}', **kwargs)
    rows = ['| model | bbox mAP | int8 share of conv multiply-adds | float convs (of all) | '
            'float round trips | latency 320 ms | latency 512 ms | vs float at 320 / 512 |',
            '|---|---|---|---|---|---|---|---|']
    profiles = {}
    lat = {side: median_latency_ms({k: (lambda s=ort_session(m, args.threads), x=x: s.run(None, {'input': x}))
                                    for k, m in models.items()}, args.runs, warmup=2, rounds=4)
           for side, x in inputs.items()}
    for label, model in models.items():
        kernels = conv_kernels(model, inputs[320])
        profiles[label] = op_time_profile(model, inputs[320], args.threads, runs=args.runs)
        rows.append(f'| {label} | {mAP(model):.3f} | {100 * int8_conv_fraction(kernels):.1f} % | '
                    f'{sum(not k.int8 for k in kernels)} of {len(kernels)} | {requantizations(model)} | '
                    f'{lat[320][label]:.1f} | '
                    f'{lat[512][label]:.1f} | {lat[320]["float"] / lat[320][label]:.2f}x / '
                    f'{lat[512]["float"] / lat[512][label]:.2f}x |')
        print(rows[-1], flush=True)
    ops = sorted({op for p in profiles.values() for op in list(p)[:6]},
                 key=lambda op: -max(p.get(op, 0.0) for p in profiles.values()))
    prof_rows = ['| model | ' + ' | '.join(ops) + ' | all ops |', '|---' * (len(ops) + 2) + '|']
    for label, p in profiles.items():
        prof_rows.append(f'| {label} | ' + ' | '.join(f'{p.get(op, 0.0):.1f}' for op in ops)
                         + f' | {sum(p.values()):.1f} |')

    float_map = mAP(float_model)
    sens_rows = []
    if not args.skip_sensitivity:
        sens_rows = ['| block quantized alone (rest float) | bbox mAP | loss (points) |', '|---|---|---|']
        all_prefixes = [p for _, prefixes in BLOCKS for p in prefixes]
        for label, prefixes in (*BLOCKS, ('head outputs', None)):
            if prefixes is None:  # the head's output convolutions alone
                kwargs = dict(float_head_outputs=False, exclude=tuple(all_prefixes) + ('/backbone', '/neck'))
            else:
                kwargs = dict(exclude=tuple(p for p in all_prefixes if p not in prefixes))
            m = mAP(quantize('block', **kwargs))
            sens_rows.append(f'| {label} | {m:.3f} | {100 * (float_map - m):.1f} |')
            print(sens_rows[-1], flush=True)
    calib_rows = []
    if not args.skip_calibration:
        calib_rows = ['| calibration | images | bbox mAP | loss (points) |', '|---|---|---|---|']
        for method, n in CALIBRATIONS:
            m = mAP(quantize('calib', calibrate_method=method, num_calib=n))
            calib_rows.append(f'| {method} | {n} | {m:.3f} | {100 * (float_map - m):.1f} |')
            print(calib_rows[-1], flush=True)

    cmd = f'.venv/bin/python benchmarks/diagnose_int8.py --ckpt {args.ckpt} --threads {args.threads} ' \
          f'--runs {args.runs} --num-calib {args.num_calib}'
    text = '\n'.join([
        SECTION, '', f'`{cmd}` ({datetime.date.today()}).', '', markdown_line(before), '',
        f'Float model: bbox mAP {float_map:.3f} on the demo val set. Every int8 model: ONNX Runtime static '
        f'QDQ, per-channel symmetric int8 weights, uint8 activations, MinMax over {args.num_calib} train '
        'images unless the row says otherwise. Latency: end to end, the first val image, '
        f'{args.threads} threads, median of {args.runs} runs, each model in blocks of its own over 4 '
        'alternating rounds.', '',
        *rows, '', 'ONNX Runtime profile at 320x320, milliseconds per run by operator type (the six largest '
        'of each model):', '', *prof_rows, '',
        *([f'Sensitivity: each block quantized alone (MinMax, {args.num_calib} images), the rest float:',
           '', *sens_rows, ''] if sens_rows else []),
        *(['Calibration of the default scheme:', '', *calib_rows, ''] if calib_rows else [])])
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
