#!/usr/bin/env python
"""The main job on the built-in demo data, stage by stage, with a summary at the end.

    python tools/run_demo.py [--config configs/fcos_effb0_demo.py] [--work-dir DIR] [--data-dir DIR]
                             [--fresh] [--quick] [--install-seconds S]

(``bash tools/run_demo.sh`` installs first, then runs this.) Stages, each a repository tool run as a
user would run it, each timed:

1. data     generate the demo data and pack train/val into LMDB (skipped when already there)
2. flops    params/FLOPs at the config's input size (``tools/analysis_tools/get_flops.py``)
3. train    ``tools/train.py --resume``: continues an interrupted run, skips a finished one
4. test     ``tools/test.py`` on the best checkpoint, ground truth beside predictions drawn
5. export   ONNX through MMDeploy (``tools/deploy/export_onnx.py``)
6. onnx     the ONNX model on the val set with ONNX Runtime (``tools/deploy/test_onnx.py``) and on a
            few val images (``tools/deploy/onnx_infer.py``)
7. int8     post-training int8 quantization, calibrated on the train set, evaluated on the val set,
            and the latency of PyTorch / ONNX float / ONNX int8 on one val image
            (``tools/deploy/quantize_onnx.py --checkpoint``)
8. report   training curves from the run's own log, a detection sheet, ``summary.md``/``summary.json``

``--fresh`` retrains from scratch (the work directory is cleared); data and packages are always
reused. ``--quick`` is the smoke-test form (a tiny data set and a few iterations, its own data and
work directories): every stage and artefact, minutes instead of a quarter of an hour.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = osp.join('configs', 'fcos_effb0_demo.py')
QUICK = dict(num_train=24, num_val=8, iters=12, val_interval=6)
NUM_INFER_IMAGES = 4
NUM_SHEET_IMAGES = 4


def log(msg: str) -> None:
    print(f'[run_demo] {msg}', flush=True)


class Stages:
    """Runs tools as subprocesses, records each stage's wall time, keeps every tool's full output in
    ``WORK_DIR/logs/<stage>.log`` and shows only its progress lines (``show``, a regex)."""

    def __init__(self, log_dir: str) -> None:
        self.seconds: dict[str, float] = {}
        self.log_dir = log_dir
        os.makedirs(log_dir, exist_ok=True)

    def run(self, stage: str, *cmd: str, show: str | None = None) -> str:
        log(f'{stage}: {" ".join(cmd)}')
        log_file = osp.join(self.log_dir, f'{stage}.log')
        pattern = re.compile(show) if show else None
        t0 = time.perf_counter()
        lines = []
        with open(log_file, 'a') as f, subprocess.Popen(
                [sys.executable, *cmd], cwd=REPO, text=True, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, bufsize=1) as proc:
            for line in proc.stdout:
                f.write(line)
                lines.append(line)
                if pattern is None or pattern.search(line):
                    print(line, end='', flush=True)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        if proc.returncode != 0:
            print(''.join(lines[-60:]))
            raise SystemExit(f'[run_demo] stage {stage!r} failed (exit {proc.returncode}): '
                             f'{" ".join(cmd)}; full output in {log_file}')
        return ''.join(lines)


# what each stage shows of its tool's output (the rest is in WORK_DIR/logs/)
PROGRESS = dict(
    flops=r'(?!)',  # nothing: its table is printed from the captured output
    train=r'Iter\(train\)|coco/bbox_mAP:|loaded \d+ of the|Error\b|^error',
    test=r'coco/bbox_mAP:|Error\b|^error',
    export=r'Error\b|^error|^wrote|written',
    onnx=r'bbox_mAP"|Error\b|^error|wrote|written',
    int8=r'^(model|float|int8|pytorch)\s|Error\b|^error|written',
)


def data_options(data_dir: str) -> list[str]:
    root = data_dir.rstrip('/') + '/'
    return [f'{k}_dataloader.dataset.data_root={root}' for k in ('train', 'val', 'test')]


def is_packed(path: str) -> bool:
    from fcos_plugin.datasets import LmdbFormatError, load_packed
    try:
        load_packed(path)
    except (LmdbFormatError, OSError):
        return False
    return True


def prepare_data(stages: Stages, data_dir: str, quick: bool) -> None:
    t0 = time.perf_counter()
    from fcos_plugin.datasets.demo_data import is_complete
    if is_complete(data_dir):
        log(f'data: {data_dir} already generated')
    else:
        extra = ['--num-train', str(QUICK['num_train']), '--num-val', str(QUICK['num_val'])] if quick else []
        stages.run('data', 'tools/datasets/make_demo_dataset.py', '--out-dir', data_dir, '--force', *extra)
    for split in ('train', 'val'):
        if is_packed(osp.join(data_dir, f'{split}_lmdb')):
            log(f'data: {split}_lmdb already packed')
            continue
        stages.run('data', 'tools/datasets/mscoco_packer.py', '--src-data-dir', data_dir,
                   '--target-data-dir', data_dir, '--split-name', split, '--pack-type', 'lmdb',
                   '--overwrite')
    stages.seconds['data'] = time.perf_counter() - t0


def finished_iters(work_dir: str) -> int | None:
    """Iterations of the newest checkpoint in ``work_dir`` (None without one)."""
    try:
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            m = re.search(r'iter_(\d+)\.pth$', f.read().strip())
    except FileNotFoundError:
        return None
    return int(m.group(1)) if m else None


def best_checkpoint(work_dir: str) -> str:
    """mmengine's ``best_coco_bbox_mAP_*.pth`` (CheckpointHook ``save_best``), else the last one."""
    best = sorted(glob.glob(osp.join(work_dir, 'best_coco_bbox_mAP_*.pth')), key=osp.getmtime)
    if best:
        return best[-1]
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def parse_flops(text: str) -> dict:
    m = re.search(r'total\s+params\s+([\d.]+) M\s+FLOPs\s+([\d.]+) G', text)
    if not m:
        raise SystemExit('[run_demo] could not read params/FLOPs from get_flops.py')
    return dict(params_m=float(m.group(1)), gflops=float(m.group(2)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', default=DEFAULT_CONFIG)
    p.add_argument('--work-dir', help='default work_dirs/<config name>[_quick]')
    p.add_argument('--data-dir', help='default data/demo (data/demo_quick with --quick)')
    p.add_argument('--fresh', action='store_true', help='retrain: clear the work directory first')
    p.add_argument('--quick', action='store_true', help='smoke test: tiny data, a few iterations')
    p.add_argument('--install-seconds', type=float, default=None,
                   help='wall time of the install stage (passed by run_demo.sh)')
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    os.chdir(REPO)
    name = osp.splitext(osp.basename(args.config))[0] + ('_quick' if args.quick else '')
    work_dir = osp.abspath(args.work_dir or osp.join('work_dirs', name))
    data_dir = osp.abspath(args.data_dir or osp.join('data', 'demo_quick' if args.quick else 'demo'))
    if args.fresh and osp.isdir(work_dir):
        shutil.rmtree(work_dir)
    os.makedirs(work_dir, exist_ok=True)
    stages = Stages(osp.join(work_dir, 'logs'))
    if args.install_seconds is not None:
        stages.seconds['install'] = args.install_seconds

    from mmengine.config import Config

    from fcos_plugin.utils import quiet_upstream_warnings
    quiet_upstream_warnings()
    cfg = Config.fromfile(args.config)
    size = cfg.get('input_size', (512, 512))
    data_opts = data_options(data_dir)
    train_opts = list(data_opts)
    if args.quick:
        iters, every = QUICK['iters'], QUICK['val_interval']
        train_opts += [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={every}',
                       f'default_hooks.checkpoint.interval={every}', 'default_hooks.logger.interval=2',
                       'param_scheduler.0.end=4', f'param_scheduler.1.end={iters}',
                       f'param_scheduler.1.T_max={iters}']

    # 1-2: data, params/FLOPs
    prepare_data(stages, data_dir, args.quick)
    flops_text = stages.run('flops', 'tools/analysis_tools/get_flops.py', args.config, '--shape',
                            str(size[1]), str(size[0]), show=PROGRESS['flops'])
    print('\n'.join(line for line in flops_text.splitlines() if re.match(r'  \S+\s+params ', line)))
    cost = parse_flops(flops_text)

    # 3: train (resumes an interrupted run; a finished one is kept)
    max_iters = QUICK['iters'] if args.quick else cfg.train_cfg.max_iters
    if finished_iters(work_dir) == max_iters:
        log(f'train: {work_dir} holds a finished run ({max_iters} iterations); --fresh retrains')
        stages.seconds['train'] = 0.0
    else:
        stages.run('train', 'tools/train.py', args.config, '--work-dir', work_dir, '--resume',
                   '--cfg-options', *train_opts, show=PROGRESS['train'])
    ckpt = best_checkpoint(work_dir)

    # 4: test the best checkpoint, pictures of ground truth | predictions
    test_dir = osp.join(work_dir, 'test')
    stages.run('test', 'tools/test.py', args.config, ckpt, '--work-dir', test_dir, '--show-dir', 'show',
               '--cfg-options', *data_opts, show=PROGRESS['test'])
    with open(osp.join(test_dir, 'test_metrics.json')) as f:
        torch_metrics = json.load(f)
    show_dirs = sorted(glob.glob(osp.join(test_dir, '2*', 'show')), key=osp.getmtime)

    # 5-6: ONNX through MMDeploy, evaluated with ONNX Runtime, and run on a few val images
    onnx_dir = osp.join(work_dir, 'onnx')
    onnx_file = osp.join(onnx_dir, f'{osp.splitext(osp.basename(args.config))[0]}.onnx')
    stages.run('export', 'tools/deploy/export_onnx.py', '--config', args.config, '--ckpt', ckpt,
               '--onnx-name', osp.basename(onnx_file), '--work-dir', onnx_dir, '--force',
               show=PROGRESS['export'])
    onnx_metrics_file = osp.join(onnx_dir, 'test_metrics.json')
    stages.run('onnx', 'tools/deploy/test_onnx.py', args.config, onnx_file, '--out', onnx_metrics_file,
               '--force', '--cfg-options', *data_opts, show=PROGRESS['onnx'])
    with open(onnx_metrics_file) as f:
        onnx_metrics = json.load(f)['metrics']
    images = sorted(glob.glob(osp.join(data_dir, 'val2017', '*.jpg')))[:NUM_INFER_IMAGES]
    infer_dir = osp.join(work_dir, 'onnx_infer')
    draw_thr = cfg.get('default_hooks', {}).get('visualization', {}).get('score_thr', 0.3)
    stages.run('onnx', 'tools/deploy/onnx_infer.py', onnx_file, *images, '--out-dir', infer_dir, '--force',
               '--score-thr', str(draw_thr), show=PROGRESS['onnx'])

    # 7: int8, with the latency of all three on the same val image
    int8_file = osp.splitext(onnx_file)[0] + '_int8.onnx'
    stages.run('int8', 'tools/deploy/quantize_onnx.py', args.config, onnx_file, '--out', int8_file,
               '--checkpoint', ckpt, '--force', '--cfg-options', *data_opts, show=PROGRESS['int8'])
    with open(osp.splitext(int8_file)[0] + '_report.json') as f:
        int8_report = json.load(f)

    # 8: report
    t0 = time.perf_counter()
    from fcos_plugin.analysis import detection_sheet, plot_training_curves, training_log
    curve = osp.join(work_dir, 'training_curve.png')
    plot_training_curves(training_log(work_dir), curve, f'{name}: losses and val mAP')
    sheet = osp.join(work_dir, 'detections.jpg')
    detection_sheet(sorted(glob.glob(osp.join(show_dirs[-1], '*.jpg')))[:NUM_SHEET_IMAGES], sheet)
    stages.seconds['report'] = time.perf_counter() - t0
    stages.seconds['total (after install)'] = time.perf_counter() - t_start

    summary = dict(
        config=args.config, work_dir=work_dir, data_dir=data_dir, checkpoint=ckpt, onnx=onnx_file,
        int8_onnx=int8_file, params_m=cost['params_m'], gflops=cost['gflops'], input_size=list(size),
        bbox_mAP=dict(pytorch=torch_metrics.get('coco/bbox_mAP'), onnx=onnx_metrics.get('coco/bbox_mAP'),
                      onnx_int8=int8_report['int8']['bbox_mAP']),
        bbox_mAP_50=dict(pytorch=torch_metrics.get('coco/bbox_mAP_50'),
                         onnx=onnx_metrics.get('coco/bbox_mAP_50'),
                         onnx_int8=int8_report['int8']['metrics'].get('coco/bbox_mAP_50')),
        latency_ms={k: round(int8_report[r]['latency_ms'], 1)
                    for k, r in (('pytorch', 'pytorch'), ('onnx', 'float'), ('onnx_int8', 'int8'))},
        latency_input=int8_report['latency']['input_shape'],
        latency_threads=int8_report['latency']['threads'], draw_score_thr=draw_thr,
        stage_seconds={k: round(v, 1) for k, v in stages.seconds.items()},
        pictures=dict(detections=sheet, all_detections=show_dirs[-1], onnx_detections=infer_dir,
                      training_curve=curve))
    lines = [
        f'# {name}', '',
        f'model: {args.config}, {cost["params_m"]:.2f} M params, {cost["gflops"]:.2f} GFLOPs at '
        f'{size[0]}x{size[1]}', '',
        '| | PyTorch | ONNX Runtime float | ONNX Runtime int8 |', '|---|---|---|---|',
        *[f'| {label} | ' + ' | '.join(f'{summary[key][k]:.3f}' for k in ('pytorch', 'onnx', 'onnx_int8'))
          + ' |' for label, key in (('bbox mAP', 'bbox_mAP'), ('bbox mAP_50', 'bbox_mAP_50'))],
        f'| latency ms, end to end ({"x".join(map(str, summary["latency_input"][2:]))}, '
        f'{summary["latency_threads"]} threads) | '
        + ' | '.join(f'{summary["latency_ms"][k]:.1f}' for k in ('pytorch', 'onnx', 'onnx_int8')) + ' |',
        '', '| stage | wall seconds |', '|---|---|',
        *[f'| {k} | {v:.1f} |' for k, v in summary['stage_seconds'].items()], '',
        f'- checkpoint: {ckpt}', f'- ONNX model: {onnx_file}', f'- int8 ONNX model: {int8_file}',
        f'- detections (ground truth | prediction): {sheet} (all: {show_dirs[-1]})',
        f'- ONNX Runtime detections: {infer_dir}', f'- training curve: {curve}', '']
    with open(osp.join(work_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    with open(osp.join(work_dir, 'summary.md'), 'w') as f:
        f.write('\n'.join(lines))
    print('\n' + '\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
