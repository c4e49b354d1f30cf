"""Time README's main command from scratch and write its RESULTS section.

    python benchmarks/bench_main_command.py [--write]

Runs ``tools/run_demo.py --fresh`` (what ``bash tools/run_demo.sh --fresh`` runs after its install step:
the data are reused when packed, training starts from scratch) in its own work directory, records the
machine and its load average before and after, and prints (``--write``: writes into
``benchmarks/RESULTS.md``) the wall seconds of every stage and the three mAPs and latencies of the run's
own ``summary.json``; ``--write`` also copies the run's training curve and detection sheet to
``benchmarks/demo_training_curve.png`` and ``benchmarks/demo_detections.jpg``, which the section shows. Two
cores: run it with nothing else running, or the minutes say more about the
other jobs than about the command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
from results_md import publish

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '## The main command, timed'
PICTURES = {'training_curve.png': 'demo_training_curve.png', 'detections.jpg': 'demo_detections.jpg'}
END_MARK = '<!-- written by benchmarks/bench_main_command.py -->'
STAGES = {'data': 'data (generate the demo images if missing, pack)', 'flops': 'params/FLOPs',
          'train': 'train (600 iterations x 8 images, validations included)',
          'test': 'test the best checkpoint, draw', 'export': 'export ONNX (MMDeploy)',
          'onnx': 'ONNX Runtime: val mAP, pictures', 'int8': 'int8: calibrate, quantize, val mAP, latency',
          'report': 'report: curves, detection sheet, summary'}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'bench_main_command'))
    parser.add_argument('--write', action='store_true', help='write the section into benchmarks/RESULTS.md')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    before = machine_facts()
    cmd = [sys.executable, osp.join(REPO, 'tools', 'run_demo.py'), '--fresh', '--work-dir', args.work_dir]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED='1'))
    after = machine_facts()
    if proc.returncode != 0:
        raise SystemExit(f'error: the main command failed (exit {proc.returncode}); nothing written')
    with open(osp.join(args.work_dir, 'summary.json')) as f:
        summary = json.load(f)
    seconds = dict(summary['stage_seconds'])
    total = seconds.pop('total (after install)')
    seconds.pop('install', None)
    rows = ['| stage | wall s |', '|---|---|']
    labels = dict(STAGES, flops=f'params/FLOPs ({summary["params_m"]:.2f} M, {summary["gflops"]:.2f} GFLOPs '
                                f'at {"x".join(map(str, summary["input_size"]))})')
    rows += [f'| {labels.get(k, k)} | {v:.1f} |' for k, v in seconds.items()]
    rows.append(f'| **total after install** | **{total:.1f} ({total / 60:.1f} min)** |')
    maps, lat = summary['bbox_mAP'], summary['latency_ms']
    size = 'x'.join(map(str, summary['latency_input'][2:]))
    text = '\n'.join([
        SECTION, '',
        f'`python benchmarks/bench_main_command.py --write` ({datetime.date.today()}): '
        '`tools/run_demo.py --fresh`, i.e. README\'s main command after its install step, packed data '
        'reused, training from scratch.', '', markdown_line(before, after), '',
        *rows, '',
        '| | PyTorch | ONNX Runtime float | ONNX Runtime int8 |', '|---|---|---|---|',
        f'| bbox mAP (demo val) | {maps["pytorch"]:.3f} | {maps["onnx"]:.3f} | {maps["onnx_int8"]:.3f} |',
        f'| latency ms, one val image end to end at {size}, {summary["latency_threads"]} threads '
        f'| {lat["pytorch"]:.1f} | {lat["onnx"]:.1f} | {lat["onnx_int8"]:.1f} |', '',
        "The run's training curve (from its own log) and the detections of its best checkpoint on the first "
        'val images (ground truth left, prediction right, score >= '
        f'{summary.get("draw_score_thr", 0.5):g}):', '',
        f'![training curve]({PICTURES["training_curve.png"]})', '',
        f'![demo detections]({PICTURES["detections.jpg"]})', ''])
    if args.write:
        for name, target in PICTURES.items():
            shutil.copyfile(osp.join(args.work_dir, name), osp.join(REPO, 'benchmarks', target))
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
