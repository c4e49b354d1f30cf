#!/usr/bin/env python
"""Evaluate an exported ONNX model with ONNX Runtime on the config's val set (COCO metric).

    python tools/deploy/test_onnx.py CONFIG MODEL.onnx [--deploy-cfg DEPLOY_CFG] [--out metrics.json]
        [--batch-size N] [--num-images N] [--cfg-options k=v ...] [--force]

The model runs through mmdeploy's backend model (the config's data preprocessor, boxes mapped back
to the original images) and is scored by the config's ``val_evaluator`` (``LmdbCocoMetric``). The
deploy config defaults to the ``deploy_cfg.py`` that ``export_onnx.py`` wrote next to the model.
Metrics are printed and written to ``--out`` (default: ``MODEL_test_metrics.json`` beside the model).
"""
import argparse
import json
import os.path as osp

from mmengine.config import DictAction

from fcos_plugin.deploy import DeployError, ensure_free, load_model_cfg
from fcos_plugin.deploy.evaluation import evaluate
from fcos_plugin.utils import quiet_upstream_warnings, write_json_atomic


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config (its val_dataloader and val_evaluator)')
    parser.add_argument('model', help='exported .onnx model')
    parser.add_argument('--deploy-cfg', help='deploy config (default: deploy_cfg.py beside the model)')
    parser.add_argument('--out', help='metrics JSON (default: <model>_test_metrics.json)')
    parser.add_argument('--batch-size', type=int, help='override the val batch size')
    parser.add_argument('--num-images', type=int, help='evaluate the first N val images only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override model config settings, key=value')
    parser.add_argument('--force', action='store_true', help='overwrite an existing --out file')
    return parser.parse_args()


def main():
    quiet_upstream_warnings()
    args = parse_args()
    out = args.out or osp.splitext(args.model)[0] + '_test_metrics.json'
    ensure_free([out], args.force)  # before minutes of evaluation, not after
    cfg = load_model_cfg(args.config, args.cfg_options)
    metrics = evaluate(cfg, args.model, args.deploy_cfg, num_images=args.num_images,
                       batch_size=args.batch_size)
    print(json.dumps(metrics, indent=1))
    ensure_free([out], args.force)  # and again after: another run may have written it meanwhile
    write_json_atomic(dict(config=osp.abspath(args.config), model=osp.abspath(args.model),
                           metrics=metrics), out)
    print(f'metrics written to {out}')


if __name__ == '__main__':
    try:
        main()
    except DeployError as e:
        raise SystemExit(f'error: {e}') from None
