#!/usr/bin/env python
"""Params and FLOPs of a detector config, per module and in total (pre-processing and NMS excluded).

    python tools/analysis_tools/get_flops.py CONFIG --shape 512 512 [--max-depth 3] [--json OUT]

1 multiply-add = 1 FLOP; elementwise operators 1 FLOP per output element (see
fcos_plugin/analysis/complexity.py). The convolution/linear count is cross-checked against torch's own
FlopCounterMode; a difference above 5% or any uncounted operator makes the tool exit with status 1.
"""
import argparse
import json
import sys

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope

import fcos_plugin  # noqa: F401
from fcos_plugin.analysis import detector_complexity
from fcos_plugin.utils import quiet_upstream_warnings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Count params and FLOPs of a detector')
    p.add_argument('config')
    p.add_argument('--shape', type=int, nargs='+', default=[512, 512], help='input H W (or one size)')
    p.add_argument('--batch', type=int, default=1)
    p.add_argument('--max-depth', type=int, default=3, help='module depth of the table')
    p.add_argument('--json', help='also write the numbers to this JSON file')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


def run(config: str, shape: tuple, max_depth: int = 3, cfg_options=None, json_out=None) -> int:
    from mmdet.registry import MODELS
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = MODELS.build(cfg.model)
    r = detector_complexity(model, shape, max_depth=max_depth)
    print(r.table)
    print()
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    top = {name: r.by_module.get(name, 0) for name in params}
    # ops traced at the detector level itself (outside backbone/neck/head), so the parts add up
    top['other'] = r.flops - sum(top.values())
    params['other'] = 0
    print(f'Input shape: {tuple(shape)} (pre-processing and NMS excluded)')
    for name in params:
        print(f'  {name:<20s} params {params[name] / 1e6:7.3f} M   FLOPs {top[name] / 1e9:7.3f} G')
    print(f'  {"total":<20s} params {r.params / 1e6:7.3f} M   FLOPs {r.flops / 1e9:7.3f} G')
    print('FLOPs by operator: ' + ', '.join(
        f'{k.replace("aten::", "")} {v / 1e9:.3f}G' for k, v in
        sorted(r.by_operator.items(), key=lambda kv: -kv[1])))
    print(f'zero-cost data-movement ops: {", ".join(o.replace("aten::", "") for o in r.data_movement_ops)}')
    print(f'cross-check (conv/linear multiply-adds): {r.matmul_flops / 1e9:.4f} G here vs '
          f'{r.reference_matmul_flops / 1e9:.4f} G by torch FlopCounterMode '
          f'({100 * r.cross_check_error:.2f}% apart)')
    status = 0
    if r.uncounted_ops:
        print(f'UNCOUNTED OPERATORS (add a handle in fcos_plugin/analysis/complexity.py): {r.uncounted_ops}')
        status = 1
    if r.cross_check_error > 0.05:
        print('CROSS-CHECK FAILED: counts differ by more than 5%')
        status = 1
    if json_out:
        with open(json_out, 'w') as f:
            json.dump(dict(config=config, shape=list(shape), params=r.params, flops=r.flops,
                           module_params=params, module_flops=top, by_operator=r.by_operator,
                           reference_matmul_flops=r.reference_matmul_flops,
                           uncounted_ops=r.uncounted_ops), f, indent=1)
    return status


def main(argv=None) -> int:
    quiet_upstream_warnings()
    args = parse_args(argv)
    hw = args.shape * 2 if len(args.shape) == 1 else args.shape
    return run(args.config, (args.batch, 3, *hw), args.max_depth, args.cfg_options, args.json)


if __name__ == '__main__':
    sys.exit(main())
