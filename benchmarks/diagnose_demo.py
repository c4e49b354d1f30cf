#!/usr/bin/env python
"""Why does a trained demo detector score what it scores? Numbers and pictures from one work dir.

    .venv/bin/python benchmarks/diagnose_demo.py WORK_DIR [--config CFG] [--ckpt CKPT]
        [--score-thr 0.3 0.5] [--data-root data/demo/] [--out-dir WORK_DIR/diagnosis] [--write]

From a ``tools/train.py`` work directory (default config: the one it saved; checkpoint: its last):

1. per-class AP (``tools/test.py`` with ``test_evaluator.classwise=True``, predictions kept);
2. mmdet's confusion matrix (``tools/analysis_tools/confusion_matrix.py`` of the mmdet wheel, reused
   as is) at each ``--score-thr``, as a table and ``confusion_matrix_<thr>.png``;
3. what the detections above each threshold are (:func:`fcos_plugin.analysis.detection_errors`:
   correct, duplicate, wrong class, poor box, background) and how many objects are missed;
4. the assignment over training (``pos_per_gt``, ``pos_iou`` logged by ``TunedFCOSHead``) and, for
   the checkpoint on training images, positives per object by level and by object size;
5. the loss terms and val mAP over training (``training_curve.png``).

Everything is printed as Markdown and written to ``OUT/diagnosis.json``. ``--write`` puts the detections
by kind, the AP per class and size, the assignment and the machine (CPU, load before and after) into
benchmarks/RESULTS.md, "Demo recipe: what the drawn detections are" (commentary below the generated part
kept).
"""
from __future__ import annotations

import argparse
import datetime
import glob
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '## Demo recipe: what the drawn detections are'
END_MARK = '<!-- end of diagnose_demo.py output; commentary below is kept by --write -->'


def mmdet_confusion_matrix_module():
    """mmdet's ``tools/analysis_tools/confusion_matrix.py`` (shipped in the wheel under ``.mim``)."""
    import mmdet
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'analysis_tools', 'confusion_matrix.py')
    spec = importlib.util.spec_from_file_location('mmdet_confusion_matrix', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assignment_by_level(cfg, ckpt: str, num_batches: int = 4) -> dict:
    """Positives per object, split by FPN level and by object size, for the checkpoint's own
    predictions on training batches (the assignment the next training step would make)."""
    from mmdet.registry import MODELS
    from mmengine.runner import Runner, load_checkpoint, set_random_seed

    from fcos_plugin.engine import safe_checkpoint_loading
    model = MODELS.build(cfg.model)
    with safe_checkpoint_loading(ckpt):
        load_checkpoint(model, ckpt, map_location='cpu', logger='silent')
    model.eval()  # BN running statistics; the assignment itself does not depend on the mode
    head = model.bbox_head
    if getattr(head, 'assign_mode', None) != 'dynamic':
        return {}
    loader_cfg = cfg.train_dataloader.copy()
    loader_cfg.update(num_workers=0, persistent_workers=False)
    # the random augmentations run in this process (no workers): seed its generators, not only the sampler,
    # or every run draws other boxes and the shares below move by a point or two
    set_random_seed(0)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    num_levels = len(head.strides)
    pos_by_level = np.zeros(num_levels)
    sizes = (0, 32, 64, 128, 1e9)
    pos_by_size, gts_by_size = np.zeros(len(sizes) - 1), np.zeros(len(sizes) - 1)
    num_gts = 0
    with torch.no_grad():
        for i, data in enumerate(loader):
            if i == num_batches:
                break
            data = model.data_preprocessor(data, True)
            gts = [s.gt_instances for s in data['data_samples']]
            cls, bbox, ctr = head(model.extract_feat(data['inputs']))
            # eval mode returns distances in pixels; the assignment decodes stride units, as in training
            bbox = [b / s for b, s in zip(bbox, head.strides)] if head.norm_on_bbox else bbox
            t = head.get_dynamic_targets(cls, bbox, ctr, gts)
            for img, gt in enumerate(gts):
                pos = t['labels'][img] < head.num_classes
                pos_by_level += np.bincount(t['level'][pos].numpy(), minlength=num_levels)
                side = (gt.bboxes[:, 2:] - gt.bboxes[:, :2]).clamp(min=0).prod(1).sqrt().numpy()
                bucket = np.digitize(side, sizes[1:-1])
                gts_by_size += np.bincount(bucket, minlength=len(sizes) - 1)
                # which GT each positive took: the one whose box is its target
                targets = t['bbox_targets'][img][pos]
                owner = (targets[:, None, :] == gt.bboxes[None].to(targets.dtype)).all(-1).float().argmax(1)
                pos_by_size += np.bincount(bucket[owner.numpy()], minlength=len(sizes) - 1)
                num_gts += len(gt)
    names = [f'<{sizes[1]}px', f'{sizes[1]}-{sizes[2]}px', f'{sizes[2]}-{sizes[3]}px', f'>{sizes[3]}px']
    return dict(
        objects=int(num_gts), pos_per_object=float(pos_by_level.sum() / max(num_gts, 1)),
        level_share={f'P{3 + i}': float(v / max(pos_by_level.sum(), 1)) for i, v in enumerate(pos_by_level)},
        pos_per_object_by_size={n: float(p / max(g, 1)) for n, p, g in zip(names, pos_by_size, gts_by_size)},
        objects_by_size={n: int(g) for n, g in zip(names, gts_by_size)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('work_dir')
    p.add_argument('--config', help='default: the config the run saved in WORK_DIR')
    p.add_argument('--ckpt', help='default: WORK_DIR/last_checkpoint')
    p.add_argument('--score-thr', type=float, nargs='+', default=[0.3, 0.5])
    p.add_argument('--data-root', help='override the data root of every dataloader')
    p.add_argument('--out-dir')
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    from mmengine.config import Config
    from mmengine.fileio import load
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    from fcos_plugin.analysis import detection_errors, plot_training_curves, training_log
    work = args.work_dir
    out = args.out_dir or osp.join(work, 'diagnosis')
    os.makedirs(out, exist_ok=True)
    config = args.config or sorted(glob.glob(osp.join(work, '*.py')))[0]
    ckpt = args.ckpt or open(osp.join(work, 'last_checkpoint')).read().strip()
    data_opts = ([f'{k}_dataloader.dataset.data_root={args.data_root}' for k in ('train', 'val', 'test')]
                 if args.data_root else [])
    report = dict(config=config, checkpoint=ckpt)

    # 1. per-class AP, predictions kept
    preds = osp.join(out, 'preds.pkl')
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'test.py'), config, ckpt, '--work-dir', out,
                    '--out', preds, '--cfg-options', 'test_evaluator.classwise=True', *data_opts],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    with open(osp.join(out, 'test_metrics.json')) as f:
        metrics = json.load(f)
    report['metrics'] = metrics
    cfg = Config.fromfile(config)
    if data_opts:
        cfg.merge_from_dict(dict(o.split('=', 1) for o in data_opts))
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    dataset = DATASETS.build(cfg.test_dataloader.dataset)
    classes = list(dataset.metainfo['classes'])
    print(f'# Diagnosis of {ckpt}\n\nbbox mAP {metrics["coco/bbox_mAP"]:.3f}, mAP_50 '
          f'{metrics["coco/bbox_mAP_50"]:.3f}, small/medium/large {metrics["coco/bbox_mAP_s"]:.3f} / '
          f'{metrics["coco/bbox_mAP_m"]:.3f} / {metrics["coco/bbox_mAP_l"]:.3f}\n')
    print('| class | AP |\n|---|---|')
    for c in classes:
        print(f'| {c} | {metrics.get(f"coco/{c}_precision", float("nan")):.3f} |')

    # 2-3. confusion matrix (mmdet's code) and what the confident detections are
    results = load(preds)
    cm_module = mmdet_confusion_matrix_module()
    gts, dets = [], []
    for i, r in enumerate(results):
        inst = [x for x in dataset.get_data_info(i)['instances'] if not x.get('ignore_flag', 0)]
        gts.append((np.array([x['bbox'] for x in inst], np.float64).reshape(-1, 4),
                    np.array([x['bbox_label'] for x in inst], np.int64)))
        pi = r['pred_instances']
        dets.append((pi['bboxes'].numpy(), pi['scores'].numpy(), pi['labels'].numpy()))
    report['confusion_matrix'], report['detections'] = {}, {}
    for thr in args.score_thr:
        cm = cm_module.calculate_confusion_matrix(dataset, results, score_thr=thr, tp_iou_thr=0.5)
        report['confusion_matrix'][str(thr)] = cm.tolist()
        cm_module.plot_confusion_matrix(cm, classes + ['background'], save_dir=out, show=False,
                                        title=f'Normalized confusion matrix, score >= {thr}')
        os.replace(osp.join(out, 'confusion_matrix.png'), osp.join(out, f'confusion_matrix_{thr}.png'))
        print(f'\nConfusion matrix at score >= {thr} (rows: ground truth, columns: detected; '
              'last row/column: background):\n')
        print('| | ' + ' | '.join(classes + ['bg']) + ' |\n|---|' + '---|' * (len(classes) + 1))
        for name, row in zip(classes + ['bg'], cm):
            print(f'| {name} | ' + ' | '.join(str(int(v)) for v in row) + ' |')
        errors = detection_errors(gts, dets, thr)
        report['detections'][str(thr)] = errors
        print(f'\nDetections with score >= {thr}: ' + ', '.join(
            f'{k} {v}' for k, v in errors.items() if k != 'dets_per_object')
            + f', detections on an object per object {errors["dets_per_object"]:.2f}')

    # 4-5. assignment and losses over training, and by level/size for the checkpoint
    try:
        log = training_log(work)
    except FileNotFoundError:
        log = None
    if log:
        from fcos_plugin.analysis.reports import read_scalars
        train, val = read_scalars(log)
        if 'pos_per_gt' in train[0]:
            marks = sorted({0, len(train) // 4, len(train) // 2, 3 * len(train) // 4, len(train) - 1})
            report['assignment_over_training'] = [
                dict(iter=train[i].get('iter', train[i].get('step')), pos_per_gt=train[i]['pos_per_gt'],
                     pos_iou=train[i]['pos_iou']) for i in marks]
            print('\n| iteration | positives per object | IoU of positives |\n|---|---|---|')
            for r in report['assignment_over_training']:
                print(f'| {r["iter"]} | {r["pos_per_gt"]:.2f} | {r["pos_iou"]:.3f} |')
        plot_training_curves(log, osp.join(out, 'training_curve.png'), osp.basename(work.rstrip('/')))
    by_level = assignment_by_level(cfg, ckpt)
    if by_level:
        report['assignment_by_level'] = by_level
        print(f'\nCheckpoint on {by_level["objects"]} training objects: {by_level["pos_per_object"]:.2f} '
              'positives per object; share by level ' +
              ', '.join(f'{k} {v:.2f}' for k, v in by_level['level_share'].items()) +
              '; positives per object by size ' +
              ', '.join(f'{k} {v:.2f} ({by_level["objects_by_size"][k]})'
                        for k, v in by_level['pos_per_object_by_size'].items()))
    with open(osp.join(out, 'diagnosis.json'), 'w') as f:
        json.dump(report, f, indent=1)
    print(f'\nwritten: {out}/diagnosis.json, confusion_matrix_*.png, training_curve.png')
    text = results_section(report, classes, args, markdown_line(before))
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


def results_section(report: dict, classes: list[str], args, machine: str) -> str:
    """The generated part of RESULTS.md's section, from the report of :func:`main`."""
    m = report['metrics']
    first = report['detections'][str(args.score_thr[0])]
    rows = ['| drawing threshold | correct | duplicate | wrong class | poor box | background '
            '| missed objects |', '|---|---|---|---|---|---|---|']
    for thr in args.score_thr:
        e = report['detections'][str(thr)]
        rows.append(f'| {thr:g} | ' + ' | '.join(str(e[k]) for k in (
            'correct', 'duplicate', 'wrong_class', 'poor_box', 'background', 'missed')) + ' |')
    per_class = sorted(((m.get(f'coco/{c}_precision', float('nan')), c) for c in classes), reverse=True)
    lines = [
        SECTION, '',
        f'`.venv/bin/python benchmarks/diagnose_demo.py {osp.relpath(osp.abspath(args.work_dir), REPO)} '
        f'--score-thr {" ".join(f"{t:g}" for t in args.score_thr)} --write` ({datetime.date.today()}) on '
        f'`{osp.relpath(osp.abspath(report["checkpoint"]), REPO)}` ({first["objects"]} val objects): every '
        'detection above the drawing threshold judged against the ground truth at IoU 0.5 '
        '(`fcos_plugin.analysis.detection_errors`: correct; duplicate of an object a higher-scoring '
        'detection took; on an object of another class only; 0.1 <= IoU < 0.5; background), and the '
        'objects no detection of their class took.', '', machine, '', *rows, '',
        f'bbox mAP {m["coco/bbox_mAP"]:.3f}, mAP_50 {m["coco/bbox_mAP_50"]:.3f} (AP small '
        f'{m["coco/bbox_mAP_s"]:.3f}, medium {m["coco/bbox_mAP_m"]:.3f}, large {m["coco/bbox_mAP_l"]:.3f}); '
        'per class: ' + ', '.join(f'{c} {ap:.3f}' for ap, c in per_class) + '.']
    over = report.get('assignment_over_training')
    if over:
        lines += ['', 'The assignment over training (`pos_per_gt` and `pos_iou`, logged by `TunedFCOSHead`):',
                  '', '| iteration | positives per object | mean IoU of the positives with their object |',
                  '|---|---|---|',
                  *[f'| {r["iter"]} | {r["pos_per_gt"]:.2f} | {r["pos_iou"]:.3f} |' for r in over]]
    by_level = report.get('assignment_by_level')
    if by_level:
        share = [round(100 * v) for v in by_level['level_share'].values()]
        lines += ['', f'The checkpoint on {by_level["objects"]} training objects: '
                  f'{by_level["pos_per_object"]:.2f} positives per object; {share[0]}% of the positives '
                  f'are on P3, {share[1]}% on P4, {share[2]}% on P5' + ''.join(
                      f', {v}% on P{3 + i}' for i, v in enumerate(share) if i > 2) + '.']
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
