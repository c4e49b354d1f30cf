#!/usr/bin/env python
"""mmdet's ``tools/analysis_tools/analyze_logs.py`` on this project's training logs.

    python tools/analysis_tools/analyze_logs.py plot_curve WORK_DIR/TIMESTAMP/vis_data/scalars.json \\
        --keys loss bbox_mAP --out curves.png
    python tools/analysis_tools/analyze_logs.py cal_train_time WORK_DIR/TIMESTAMP/vis_data/scalars.json

The plotting and timing are mmdet's own ``plot_curve`` and ``cal_train_time`` (from the copy of the
script mmdet installs under ``mmdet/.mim/tools``), with the same options. Adapted, only where mmdet's
script cannot read our logs:

* **iteration-based logs** (``IterBasedTrainLoop``, as in the demo configs: no record has an ``epoch``
  key). mmdet groups the records by epoch, so a whole run is "epoch 1" and a second validation makes
  ``plot_curve`` fail (``x and y must have same first dimension``). Here each group is the training up
  to one validation, keyed by the iteration that validation follows: mAP is drawn at that iteration on
  an ``iter`` axis, and ``cal_train_time``'s "epoch N" is the N-th stretch between validations.
  Epoch-based logs go through mmdet's ``load_json_logs`` unchanged.
* ``--keys coco/bbox_mAP`` (the name in ``scalars.json``) means ``bbox_mAP``: mmdet's reader keeps only
  the part after the last ``/``.
* ``seaborn``, which mmdet's script imports only for ``sns.set_style``, is not one of our dependencies;
  without it the style is matplotlib's copy of seaborn's (``seaborn-v0_8-<style>``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os.path as osp
import sys
import types
from collections import defaultdict

MMDET_SCRIPT = osp.join('tools', 'analysis_tools', 'analyze_logs.py')


def mmdet_script_path() -> str:
    """mmdet's analyze_logs.py: inside the installed package (``.mim/``) or, for a source checkout of
    mmdet, beside it."""
    spec = importlib.util.find_spec('mmdet')  # finds the package without importing it (and torch)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit('error: mmdet is not installed')
    package = list(spec.submodule_search_locations)[0]
    for path in (osp.join(package, '.mim', MMDET_SCRIPT), osp.join(osp.dirname(package), MMDET_SCRIPT)):
        if osp.isfile(path):
            return path
    raise SystemExit(f'error: mmdet at {package} ships no {MMDET_SCRIPT}')


def load_mmdet_tool() -> types.ModuleType:
    """mmdet's script as a module; a stand-in ``seaborn`` is visible to it only while it is imported."""
    stand_in = importlib.util.find_spec('seaborn') is None
    if stand_in:
        import matplotlib.pyplot as plt

        def set_style(style: str = 'darkgrid', rc: dict | None = None) -> None:
            if f'seaborn-v0_8-{style}' in plt.style.available:
                plt.style.use(f'seaborn-v0_8-{style}')

        sys.modules['seaborn'] = types.SimpleNamespace(set_style=set_style)
    try:
        spec = importlib.util.spec_from_file_location('mmdet_analyze_logs', mmdet_script_path())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if stand_in:
            sys.modules.pop('seaborn', None)
    return module


def read_records(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def is_iteration_based(records: list[dict]) -> bool:
    """mmengine writes ``epoch`` into the training records of epoch-based runs only."""
    return not any('epoch' in r for r in records)


def load_iteration_log(records: list[dict]) -> dict:
    """An iteration-based log in the structure of mmdet's ``load_json_logs`` (group -> key -> values).

    A record with a ``/`` key (``coco/bbox_mAP``) is a validation: its metrics, under mmdet's short
    names, close the group, keyed by the iteration it follows (its ``step``; runs logged with
    ``log_metric_by_epoch=True`` write the epoch, 0, there: then the last training iteration before it).
    A record with ``loss`` is a training record: all of it goes into the open group. Anything else (the
    timing line of a validation that produced no metric) is skipped. Training after the last validation
    is a group keyed by its last iteration."""
    log_dict: dict = {}
    group: defaultdict = defaultdict(list)
    last_step = 0

    def close(at: int) -> None:
        for key, values in group.items():
            log_dict.setdefault(at, defaultdict(list))[key].extend(values)

    for record in records:
        metrics = {k.split('/')[-1]: v for k, v in record.items() if '/' in k}
        if metrics:
            for key, value in metrics.items():
                group[key].append(value)
            step = record.get('step', 0)
            close(step if step >= last_step else last_step)
            group = defaultdict(list)
        elif 'loss' in record:
            for key, value in record.items():
                group[key].append(value)
            last_step = record.get('step', last_step)
    if group:
        close(last_step)
    return log_dict


class _IterationPyplot:
    """pyplot for mmdet's ``plot_curve`` on iteration-based logs: its x label ``epoch`` (what it calls a
    group) reads ``iter``, which is what the groups are keyed by there."""

    def __getattr__(self, name: str):
        import matplotlib.pyplot as plt
        return getattr(plt, name)

    @staticmethod
    def xlabel(label: str, *args, **kwargs):
        import matplotlib.pyplot as plt
        return plt.xlabel('iter' if label == 'epoch' else label, *args, **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """mmdet's command line (``plot_curve`` and ``cal_train_time``, same options and defaults)."""
    parser = argparse.ArgumentParser(description='Analyze Json Log (mmdet analyze_logs.py)')
    subparsers = parser.add_subparsers(dest='task', required=True, help='task parser')
    plot = subparsers.add_parser('plot_curve', help='parser for plotting curves')
    plot.add_argument('json_logs', type=str, nargs='+', help='path of train log in json format')
    plot.add_argument('--keys', type=str, nargs='+', default=['bbox_mAP'],
                      help='the metric that you want to plot (coco/bbox_mAP and bbox_mAP are the same)')
    plot.add_argument('--start-epoch', type=str, default='1', help='the epoch that you want to start')
    plot.add_argument('--eval-interval', type=str, default='1', help='the eval interval when training')
    plot.add_argument('--title', type=str, help='title of figure')
    plot.add_argument('--legend', type=str, nargs='+', default=None, help='legend of each plot')
    plot.add_argument('--backend', type=str, default=None, help='backend of plt')
    plot.add_argument('--style', type=str, default='dark', help='style of plt')
    plot.add_argument('--out', type=str, default=None)
    time = subparsers.add_parser('cal_train_time',
                                 help='parser for computing the average time per training iteration')
    time.add_argument('json_logs', type=str, nargs='+', help='path of train log in json format')
    time.add_argument('--include-outliers', action='store_true',
                      help='include the first value of every epoch when computing the average time')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for json_log in args.json_logs:
        if not json_log.endswith('.json'):
            raise SystemExit(f'error: {json_log} is not a .json log (WORK_DIR/TIMESTAMP/vis_data/*.json)')
    tool = load_mmdet_tool()
    log_dicts, by_iteration = [], []
    for json_log in args.json_logs:
        records = read_records(json_log)
        by_iteration.append(is_iteration_based(records))
        log_dicts.append(load_iteration_log(records) if by_iteration[-1]
                         else tool.load_json_logs([json_log])[0])
        if args.task == 'cal_train_time' and by_iteration[-1]:
            print(f'{json_log}: iteration-based log, "epoch N" below is the N-th stretch of training '
                  f'between validations (ending at iterations {list(log_dicts[-1])})')
    if args.task == 'plot_curve':
        args.keys = [key.split('/')[-1] for key in args.keys]
        if all(by_iteration):
            tool.plt = _IterationPyplot()
    getattr(tool, args.task)(log_dicts, args)


if __name__ == '__main__':
    main()
