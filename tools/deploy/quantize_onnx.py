#!/usr/bin/env python
"""int8 post-training quantization of an exported model with ONNX Runtime, calibrated on the
config's LMDB train set; then COCO mAP and latency of the float and int8 models side by side.

    python tools/deploy/quantize_onnx.py CONFIG MODEL.onnx [--out MODEL_int8.onnx]
        [--num-calib 32] [--calib-method MinMax|Percentile|Entropy] [--percentile 99.999]
        [--no-per-channel] [--reduce-range] [--int8-head-outputs] [--no-fold-scales]
        [--no-eval] [--num-images N] [--checkpoint CKPT] [--cfg-options k=v ...] [--force]

The network -- backbone, BiFPN and head towers: convolutions, activations, additions, fusion weights,
resize, max-pool -- is quantized as QDQ (int8 per-channel symmetric weights, uint8 activations), so that
ONNX Runtime runs it as a chain of int8 kernels; the head's output convolutions, score computation, box
decoding, top-k and NMS stay float (``--int8-head-outputs`` quantizes those convolutions too). The
BiFPN's fusion weights, constants of a trained model, are folded into the scales its inputs are read at
instead of being multiplied at run time (``--no-fold-scales`` keeps the multiplications). On a CPU
without VNNI/AMX the weights are 7-bit (``reduce_range``) automatically; ``--reduce-range`` forces it.
The deploy config is the ``deploy_cfg.py`` next to the model (written by ``export_onnx.py``); the int8
model reuses the model's directory files (``pipeline.json``...), so by default it is written next to it.

Latency is the median of 10 ONNX Runtime runs of each model on 2 threads, each model timed in blocks of
its own, on the first val image preprocessed as in the evaluation: at the model's static input size, or
for a dynamic model the size the test pipeline gives; with ``--checkpoint`` the PyTorch model (network,
post-processing and NMS) is timed beside them on the same input. The model's input size is checked
against its deploy config and ``export_meta.json`` before calibration, so a mismatch fails in seconds.
"""
from __future__ import annotations

import argparse
import copy
import os.path as osp

import torch
from mmengine.config import DictAction

from fcos_plugin.deploy import (
    CALIBRATION_METHODS,
    DeployError,
    ensure_free,
    load_model_cfg,
    quantize_int8,
)
from fcos_plugin.deploy.evaluation import (
    evaluate,
    latency_input,
    median_latency_ms,
    onnx_latency_fns,
    pytorch_model,
)
from fcos_plugin.utils import quiet_upstream_warnings, write_json_atomic

LATENCY_THREADS = 2
LATENCY_RUNS = 10


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config (train set for calibration, val set for mAP)')
    parser.add_argument('model', help='exported float .onnx model')
    parser.add_argument('--out', help='int8 model (default: <model>_int8.onnx)')
    parser.add_argument('--deploy-cfg', help='deploy config (default: deploy_cfg.py beside the model)')
    parser.add_argument('--num-calib', type=int, default=32, help='calibration images')
    parser.add_argument('--calib-method', default='MinMax', choices=CALIBRATION_METHODS,
                        help='activation ranges: MinMax, Percentile or Entropy')
    parser.add_argument('--percentile', type=float, default=99.999, help='with --calib-method Percentile')
    parser.add_argument('--no-per-channel', action='store_true', help='per-tensor weight scales')
    parser.add_argument('--reduce-range', action='store_true', default=None,
                        help='7-bit weights (the default on CPUs without VNNI/AMX, where 8-bit u8 x s8 '
                             'products saturate)')
    parser.add_argument('--int8-head-outputs', action='store_true',
                        help="quantize the head's output convolutions too (float by default)")
    parser.add_argument('--no-fold-scales', action='store_true',
                        help='multiply by the BiFPN fusion weights at run time instead of folding them '
                             'into the dequantization scales')
    parser.add_argument('--no-eval', action='store_true', help='skip the mAP/latency comparison')
    parser.add_argument('--num-images', type=int, help='evaluate on the first N val images only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override model config settings, key=value')
    parser.add_argument('--checkpoint',
                        help='time the PyTorch model of this checkpoint too, on the same input')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    return parser.parse_args()


def main():
    quiet_upstream_warnings()
    args = parse_args()
    out = args.out or osp.splitext(args.model)[0] + '_int8.onnx'
    report = osp.splitext(out)[0] + '_report.json'
    ensure_free([out] + ([] if args.no_eval else [report]), args.force)
    cfg = load_model_cfg(args.config, args.cfg_options)
    if not args.no_eval:  # the input size and the val set checked before calibration, not after
        x, samples = latency_input(cfg, args.model, args.deploy_cfg)
    info = quantize_int8(cfg, args.model, out, args.deploy_cfg, num_calib=args.num_calib,
                         per_channel=not args.no_per_channel, reduce_range=args.reduce_range,
                         calibrate_method=args.calib_method, percentile=args.percentile,
                         float_head_outputs=not args.int8_head_outputs,
                         fold_scales=not args.no_fold_scales, force=args.force)
    if args.no_eval:
        return
    models = dict(float=args.model, int8=out)
    rows = {name: dict(model=osp.abspath(path),
                       metrics=evaluate(cfg, path, args.deploy_cfg, num_images=args.num_images))
            for name, path in models.items()}
    fns = {}
    if args.checkpoint:  # PyTorch eager: network + post-processing + NMS, as the graph does
        torch_model = pytorch_model(cfg, args.checkpoint, out)
        torch.set_num_threads(LATENCY_THREADS)
        fns['pytorch'] = lambda: torch_model.predict(x, copy.deepcopy(samples), rescale=False)
    fns.update(onnx_latency_fns(models, x.numpy(), threads=LATENCY_THREADS))
    latency = median_latency_ms(fns, LATENCY_RUNS)
    for name, row in rows.items():
        row.update(bbox_mAP=row['metrics'].get('coco/bbox_mAP'), latency_ms=latency[name])
    if args.checkpoint:
        rows = dict(pytorch=dict(checkpoint=osp.abspath(args.checkpoint), latency_ms=latency['pytorch']),
                    **rows)
    shape = list(x.shape)
    print(f'{"model":8s} {"bbox_mAP":>9s} {"latency ms":>11s}   '
          f'({"x".join(map(str, shape))}, {LATENCY_THREADS} threads)')
    for name, row in rows.items():
        print(f'{name:8s} {row.get("bbox_mAP", "-")!s:>9s} {row["latency_ms"]:11.1f}')
    ensure_free([report], args.force)  # checked before the evaluation too; another run may have written it
    write_json_atomic(dict(quantization=info,
                           latency=dict(input_shape=shape, image=samples[0].img_path,
                                        threads=LATENCY_THREADS, runs=LATENCY_RUNS),
                           **rows), report)
    print(f'report written to {report}')


if __name__ == '__main__':
    try:
        main()
    except DeployError as e:
        raise SystemExit(f'error: {e}') from None
