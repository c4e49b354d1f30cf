#!/usr/bin/env python
"""ONNX Runtime float and int8 vs PyTorch eager: latency at 1x3x512x512 on 2 CPU threads and bbox mAP
on the demo val set, all measured in one run.

    .venv/bin/python benchmarks/bench_onnx.py --ckpt CKPT [--config configs/fcos_effb0_demo.py]
        [--data-root data/demo/] [--work-dir /tmp/bench_onnx] [--threads 2] [--runs 20]
        [--num-calib 32] [--num-images N] [--write]

The checkpoint is exported with ``tools/deploy/export_onnx.py``'s code (dynamic shapes, NMS inside)
and quantized with ``quantize_onnx.py``'s (int8 convolutions, calibrated on the train set). Latency is
the median of ``--runs`` end-to-end passes on the same real image (the first val image, resized to
512x512 and normalised by the val pipeline and data preprocessor) -- PyTorch ``model.predict``
(network + post-processing + NMS) vs one ONNX Runtime ``run`` -- with the three backends interleaved
so machine noise hits them alike. Evaluation, the latency input and the timing loop are
``fcos_plugin.deploy.evaluation``'s, as in ``quantize_onnx.py``. ``--write`` puts the table into
benchmarks/RESULTS.md under "## ONNX export and int8" (replacing that section only).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import glob
import os
import os.path as osp

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '## ONNX export and int8'
#: Ends the generated part of the section: what follows it (commentary) is kept by --write.
END_MARK = '<!-- end of bench_onnx.py output; commentary below is kept by --write -->'
LATENCY_HW = (512, 512)
TARGET_SPEEDUP = 2.0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--ckpt', required=True, help='checkpoint of --config')
    parser.add_argument('--config', default=osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo'),
                        help='demo LMDB pack (train_lmdb for calibration, val_lmdb for mAP)')
    parser.add_argument('--work-dir', default='/tmp/bench_onnx')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--runs', type=int, default=20)
    parser.add_argument('--num-calib', type=int, default=32)
    parser.add_argument('--num-images', type=int, help='evaluate the first N val images only')
    parser.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    return parser.parse_args()


def write_section(text: str) -> str:
    """Put ``text`` (the generated part, heading first) into RESULTS.md: replaces the previous generated part
    of the section (up to :data:`END_MARK`) and keeps the commentary after it; a section without the mark
    is replaced whole."""
    path = osp.join(REPO, 'benchmarks', 'RESULTS.md')
    old = open(path).read() if osp.isfile(path) else '# Benchmark results\n'
    text = text.rstrip('\n') + '\n\n' + END_MARK + '\n'
    start = old.find(SECTION + '\n')
    if start < 0:
        new = old.rstrip('\n') + '\n\n' + text
    else:
        next_section = old.find('\n## ', start + len(SECTION))
        mark = old.find(END_MARK, start)
        if mark >= 0 and (next_section < 0 or mark < next_section):
            rest = old[mark + len(END_MARK):].lstrip('\n')
        else:
            rest = old[next_section + 1:] if next_section >= 0 else ''
        new = old[:start] + text + ('\n' + rest if rest else '')
        new = new.rstrip('\n') + '\n'
    from fcos_plugin.utils import write_atomic

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(new)
    write_atomic(path, write)
    return path


def main():
    args = parse_args()
    from mmdeploy.apis import build_task_processor

    from fcos_plugin.deploy import export_onnx, init_scope, load_deploy_cfg, load_model_cfg, quantize_int8
    from fcos_plugin.deploy.evaluation import evaluate, latency_input, median_latency_ms, ort_session
    torch.set_num_threads(args.threads)
    init_scope()
    root = osp.abspath(args.data_root)
    cfg = load_model_cfg(args.config, {f'{s}_dataloader.dataset.data_root': root
                                       for s in ('train', 'val', 'test')})
    quiet = lambda s: None  # noqa: E731
    paths = export_onnx(cfg, args.ckpt, args.work_dir, onnx_name='fcos.onnx', force=True)
    float_model = paths['onnx']
    int8_model = osp.join(args.work_dir, 'fcos_int8.onnx')
    quantize_int8(cfg, float_model, int8_model, num_calib=args.num_calib, force=True)

    task = build_task_processor(copy.deepcopy(cfg), load_deploy_cfg(paths['deploy_cfg']), 'cpu')
    torch_model = task.build_pytorch_model(args.ckpt)
    x, samples = latency_input(cfg, float_model, shape=LATENCY_HW)
    x_np = x.numpy()
    fns = {'PyTorch eager': lambda: torch_model.predict(x, copy.deepcopy(samples), rescale=False)}
    for name, path in (('ORT float', float_model), ('ORT int8', int8_model)):
        session = ort_session(path, args.threads)
        fns[name] = lambda session=session: session.run(None, {'input': x_np})
    lat = median_latency_ms(fns, args.runs)

    maps = {'PyTorch eager': evaluate(cfg, torch_model, paths['deploy_cfg'], num_images=args.num_images,
                                      log=quiet),
            'ORT float': evaluate(cfg, float_model, num_images=args.num_images, log=quiet),
            'ORT int8': evaluate(cfg, int8_model, num_images=args.num_images, log=quiet)}
    eager = lat['PyTorch eager']
    rows = ['| backend | latency ms (median) | speed-up vs eager | bbox mAP | mAP_50 |',
            '|---|---|---|---|---|']
    for name in lat:
        m = maps[name]
        rows.append(f'| {name} | {lat[name]:.1f} | {eager / lat[name]:.2f}x | '
                    f'{m.get("coco/bbox_mAP", float("nan")):.3f} | '
                    f'{m.get("coco/bbox_mAP_50", float("nan")):.3f} |')
    speedup = eager / lat['ORT float']
    n_val = len(glob.glob(osp.join(root, 'val2017', '*.jpg'))) if args.num_images is None \
        else args.num_images
    load = os.getloadavg()[0]
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_onnx.py --ckpt {args.ckpt} --threads {args.threads} '
        f'--runs {args.runs} --num-calib {args.num_calib}` ({datetime.date.today()}; load average '
        f'{load:.1f} on the 2 cores while it ran).', '',
        f'Model: {osp.basename(args.config)}, exported end to end (NMS inside, dynamic shapes); '
        f'int8: ONNX Runtime static QDQ quantization of the convolutions '
        f'only (per-channel int8 weights, uint8 activations, MinMax over {args.num_calib} train '
        f'images), post-processing float. Latency: {"x".join(map(str, x.shape))}, {args.threads} threads, '
        f'end-to-end (network + decoding + NMS). mAP: {n_val} demo val images, the config\'s '
        f'test pipeline.', '', *rows, '',
        f'ORT float vs PyTorch eager: **{speedup:.2f}x** (target >= {TARGET_SPEEDUP:.0f}x: '
        f'{"met" if speedup >= TARGET_SPEEDUP else "NOT met"}); int8 vs float: '
        f'{lat["ORT float"] / lat["ORT int8"]:.2f}x.', ''])
    print(text)
    if args.write:
        print(f'written to {write_section(text)}')


if __name__ == '__main__':
    main()
