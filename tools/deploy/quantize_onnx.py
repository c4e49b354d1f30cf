#!/usr/bin/env python
"""int8 post-training quantization of an exported model with ONNX Runtime, calibrated on the
config's LMDB train set; then COCO mAP and latency of the float and int8 models side by side.

    python tools/deploy/quantize_onnx.py CONFIG MODEL.onnx [--out MODEL_int8.onnx]
        [--num-calib 32] [--calib-method MinMax] [--no-per-channel] [--reduce-range]
        [--no-eval] [--num-images N] [--cfg-options k=v ...] [--force]

Only the convolutions (backbone, neck, head) are quantized, as QDQ with int8 per-channel weights and
uint8 activations; score computation, box decoding, top-k and NMS stay float. The deploy config is
the ``deploy_cfg.py`` next to the model (written by ``export_onnx.py``); the int8 model reuses the
model's directory files (``pipeline.json``...), so by default it is written next to it.

Latency is the median of 10 interleaved ONNX Runtime runs of each model on 2 threads, on the first val
image preprocessed as in the evaluation: at the model's static input size, or for a dynamic model
the size the test pipeline gives. The model's input size is checked against its deploy config and
``export_meta.json`` before calibration, so a mismatch fails in seconds.
"""
from __future__ import annotations

import argparse
import os.path as osp

from mmengine.config import DictAction

from fcos_plugin.deploy import DeployError, ensure_free, load_model_cfg, quantize_int8, write_json_atomic
from fcos_plugin.deploy.evaluation import evaluate, latency_input, onnx_latency_ms

LATENCY_THREADS = 2
LATENCY_RUNS = 10


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config (train set for calibration, val set for mAP)')
    parser.add_argument('model', help='exported float .onnx model')
    parser.add_argument('--out', help='int8 model (default: <model>_int8.onnx)')
    parser.add_argument('--deploy-cfg', help='deploy config (default: deploy_cfg.py beside the model)')
    parser.add_argument('--num-calib', type=int, default=32, help='calibration images')
    parser.add_argument('--calib-method', default='MinMax', help='MinMax, Entropy or Percentile')
    parser.add_argument('--no-per-channel', action='store_true', help='per-tensor weight scales')
    parser.add_argument('--reduce-range', action='store_true',
                        help='7-bit weights (avoids u8s8 saturation on CPUs without VNNI)')
    parser.add_argument('--no-eval', action='store_true', help='skip the mAP/latency comparison')
    parser.add_argument('--num-images', type=int, help='evaluate on the first N val images only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override model config settings, key=value')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    return parser.parse_args()


def main():
    args = parse_args()
    out = args.out or osp.splitext(args.model)[0] + '_int8.onnx'
    report = osp.splitext(out)[0] + '_report.json'
    ensure_free([out] + ([] if args.no_eval else [report]), args.force)
    cfg = load_model_cfg(args.config, args.cfg_options)
    if not args.no_eval:  # the input size and the val set checked before calibration, not after
        x, samples = latency_input(cfg, args.model, args.deploy_cfg)
    info = quantize_int8(cfg, args.model, out, args.deploy_cfg, num_calib=args.num_calib,
                         per_channel=not args.no_per_channel, reduce_range=args.reduce_range,
                         calibrate_method=args.calib_method, force=args.force)
    if args.no_eval:
        return
    models = dict(float=args.model, int8=out)
    rows = {name: dict(model=osp.abspath(path),
                       metrics=evaluate(cfg, path, args.deploy_cfg, num_images=args.num_images))
            for name, path in models.items()}
    latency = onnx_latency_ms(models, x.numpy(), threads=LATENCY_THREADS, runs=LATENCY_RUNS)
    for name, row in rows.items():
        row.update(bbox_mAP=row['metrics'].get('coco/bbox_mAP'), latency_ms=latency[name])
    shape = list(x.shape)
    print(f'{"model":8s} {"bbox_mAP":>9s} {"latency ms":>11s}   '
          f'({"x".join(map(str, shape))}, {LATENCY_THREADS} threads)')
    for name, row in rows.items():
        print(f'{name:8s} {row["bbox_mAP"]!s:>9s} {row["latency_ms"]:11.1f}')
    write_json_atomic(dict(quantization=info,
                           latency=dict(input_shape=shape, image=samples[0].img_path,
                                        threads=LATENCY_THREADS, runs=LATENCY_RUNS),
                           **rows), report, force=args.force)
    print(f'report written to {report}')


if __name__ == '__main__':
    try:
        main()
    except DeployError as e:
        raise SystemExit(f'error: {e}') from None
