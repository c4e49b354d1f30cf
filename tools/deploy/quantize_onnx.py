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
"""
import argparse
import os.path as osp
import time

import numpy as np
from mmengine.config import DictAction

from fcos_plugin.deploy.api import (
    DeployError,
    ensure_free,
    evaluate,
    load_model_cfg,
    quantize_int8,
    write_json_atomic,
)


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


def latency_ms(model: str, shape=(1, 3, 512, 512), threads: int = 2, runs: int = 10) -> float:
    """Median ONNX Runtime latency of one forward pass on a random input."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])
    x = np.random.RandomState(0).standard_normal(shape).astype(np.float32)
    sess.run(None, {'input': x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {'input': x})
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main():
    args = parse_args()
    out = args.out or osp.splitext(args.model)[0] + '_int8.onnx'
    report = osp.splitext(out)[0] + '_report.json'
    ensure_free([out] + ([] if args.no_eval else [report]), args.force)
    cfg = load_model_cfg(args.config, args.cfg_options)
    info = quantize_int8(cfg, args.model, out, args.deploy_cfg, num_calib=args.num_calib,
                         per_channel=not args.no_per_channel, reduce_range=args.reduce_range,
                         calibrate_method=args.calib_method, force=args.force)
    if args.no_eval:
        return
    rows = {}
    for name, path in (('float', args.model), ('int8', out)):
        metrics = evaluate(cfg, path, args.deploy_cfg, indices=args.num_images)
        rows[name] = dict(model=osp.abspath(path), bbox_mAP=metrics.get('coco/bbox_mAP'),
                          latency_ms_1x3x512x512_2threads=latency_ms(path), metrics=metrics)
    print(f'{"model":8s} {"bbox_mAP":>9s} {"latency ms":>11s}')
    for name, row in rows.items():
        print(f'{name:8s} {row["bbox_mAP"]!s:>9s} {row["latency_ms_1x3x512x512_2threads"]:11.1f}')
    write_json_atomic(dict(quantization=info, **rows), report, force=args.force)
    print(f'report written to {report}')


if __name__ == '__main__':
    try:
        main()
    except DeployError as e:
        raise SystemExit(f'error: {e}') from None
