"""Quantization-aware training of the demo model, measured as a user runs it, and its RESULTS section.

    python benchmarks/bench_qat.py --float-ckpt CKPT [--write]

From the float checkpoint ``CKPT`` (the main command's best, e.g.
``work_dirs/fcos_effb0_demo/best_coco_bbox_mAP_iter_600.pth``), the commands of docs/en/get_started.md's
QAT section, each run as a tool: ``tools/train.py configs/fcos_effb0_demo_qat.py`` (calibration, 100
iterations with the quantization simulated), ``tools/test.py`` on its checkpoint (simulated int8 in
PyTorch), ``tools/deploy/export_onnx.py`` (the QDQ model) and ``tools/deploy/test_onnx.py`` (that model
in ONNX Runtime); the float checkpoint is evaluated by ``tools/test.py`` too, and so is its float twin of
the QAT run, ``configs/fcos_effb0_demo_finetune.py`` (the same 100 iterations and schedule without the
quantization): the control that says how much of QAT's score is fine-tuning and how much is QAT.
Prints (``--write``: writes into ``benchmarks/RESULTS.md``) the bbox mAPs, the wall time of each step
and the machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os.path as osp
import shutil
import subprocess
import sys
import time

from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
from results_md import publish

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FLOAT_CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
QAT_CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo_qat.py')
FINETUNE_CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo_finetune.py')
SECTION = '## Quantization-aware training (QAT) of the demo model'
END_MARK = '<!-- written by benchmarks/bench_qat.py -->'


def run(*args: str) -> float:
    """Run a repository tool; its wall seconds (exits on failure)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f'error: {" ".join(args[:2])} failed (exit {proc.returncode}); nothing written')
    return time.perf_counter() - t0


def metrics(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--float-ckpt', required=True)
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'demo') + '/')
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'bench_qat'))
    parser.add_argument('--write', action='store_true')
    args = parser.parse_args()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    data = [f'{s}_dataloader.dataset.data_root={args.data_root}' for s in ('train', 'val', 'test')]
    before = machine_facts()
    seconds = {}
    float_dir, qat_dir = osp.join(args.work_dir, 'float_test'), osp.join(args.work_dir, 'qat')
    qat_ckpt, onnx_dir = osp.join(qat_dir, 'iter_100.pth'), osp.join(args.work_dir, 'onnx')
    ort_json = osp.join(args.work_dir, 'qat_onnx_metrics.json')
    ft_dir = osp.join(args.work_dir, 'finetune')
    steps = {
        'float: tools/test.py': ['tools/test.py', FLOAT_CFG, args.float_ckpt, '--work-dir', float_dir,
                                 '--cfg-options', *data],
        'float fine-tune: tools/train.py (100 iterations)': [
            'tools/train.py', FINETUNE_CFG, '--work-dir', ft_dir, '--cfg-options',
            f'load_from={args.float_ckpt}', *data],
        'float fine-tune: tools/test.py': [
            'tools/test.py', FINETUNE_CFG, osp.join(ft_dir, 'iter_100.pth'), '--work-dir',
            osp.join(args.work_dir, 'finetune_test'), '--cfg-options', *data],
        'QAT: tools/train.py (calibration + 100 iterations)': [
            'tools/train.py', QAT_CFG, '--work-dir', qat_dir, '--cfg-options',
            f'load_from={args.float_ckpt}', *data],
        'QAT: tools/test.py (simulated int8)': [
            'tools/test.py', QAT_CFG, qat_ckpt, '--work-dir', osp.join(args.work_dir, 'qat_test'),
            '--cfg-options', *data],
        'QAT: tools/deploy/export_onnx.py (QDQ model)': [
            'tools/deploy/export_onnx.py', '--config', QAT_CFG, '--ckpt', qat_ckpt, '--onnx-name',
            'fcos_qat.onnx', '--work-dir', onnx_dir],
        'QAT: tools/deploy/test_onnx.py (ONNX Runtime)': [
            'tools/deploy/test_onnx.py', QAT_CFG, osp.join(onnx_dir, 'fcos_qat.onnx'), '--out', ort_json,
            '--cfg-options', *data],
    }
    for name, cmd in steps.items():
        seconds[name] = run(*cmd)
    after = machine_facts()
    maps = dict(float=metrics(osp.join(float_dir, 'test_metrics.json'))['coco/bbox_mAP'],
                finetune=metrics(osp.join(args.work_dir, 'finetune_test',
                                          'test_metrics.json'))['coco/bbox_mAP'],
                simulated=metrics(osp.join(args.work_dir, 'qat_test', 'test_metrics.json'))['coco/bbox_mAP'],
                ort=metrics(ort_json)['metrics']['coco/bbox_mAP'])
    text = '\n'.join([
        SECTION, '',
        f'`python benchmarks/bench_qat.py --float-ckpt {osp.relpath(args.float_ckpt, REPO)} --write` '
        f'({datetime.date.today()}): the QAT commands of docs/en/get_started.md, each run as a tool.', '',
        markdown_line(before, after), '',
        '| model | bbox mAP (demo val) |', '|---|---|',
        f'| float checkpoint, PyTorch | {maps["float"]:.3f} |',
        f'| float checkpoint fine-tuned like QAT (100 iterations, no quantization), PyTorch '
        f'| {maps["finetune"]:.3f} |',
        f'| QAT (100 iterations), PyTorch with the quantization simulated | {maps["simulated"]:.3f} |',
        f'| QAT, exported QDQ model in ONNX Runtime (int8 kernels) | {maps["ort"]:.3f} |', '',
        '| step | wall s |', '|---|---|', *[f'| {k} | {v:.1f} |' for k, v in seconds.items()], ''])
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
