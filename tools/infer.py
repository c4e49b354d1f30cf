#!/usr/bin/env python
"""Detect objects in your own images with the PyTorch model (mmdet's ``DetInferencer``).

    python tools/infer.py IMAGE|DIR [IMAGE|DIR ...] CONFIG CHECKPOINT [--out-dir outputs]
                          [--score-thr T] [--device cpu] [--batch-size 1]

mmdet's ``demo/image_demo.py`` conventions: pictures with the detections drawn go to ``OUT/vis/``, the
detections of every image (mmdet's result format: ``labels``, ``scores``, ``bboxes`` as x1y1x2y2 in
original-image pixels) to ``OUT/preds/<image name>.json``. Class names come from the checkpoint's
``dataset_meta`` (written by ``tools/train.py``), so no dataset is needed. ``--score-thr`` is the drawing
threshold (default: the config's ``default_hooks.visualization.score_thr``); the JSON keeps every
detection the model's ``test_cfg`` keeps.

Inputs that are not images (missing, unreadable, not decodable) are reported and skipped; the others
are still processed. Grayscale images are read as 3-channel, an alpha channel is dropped (the model
sees what ``tools/test.py`` would), and each is named in the output. Exit status: 0 when every input
was processed, 1 when some were skipped, 2 when none could be.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
LARGE_PIXELS = 50_000_000  # decoding such an image takes seconds and ~150 MB; say so


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('inputs', nargs='+', help='image files or directories, then CONFIG and CHECKPOINT')
    p.add_argument('--out-dir', default='outputs', help='where vis/ and preds/ are written')
    p.add_argument('--score-thr', type=float, default=None, help='drawing threshold')
    p.add_argument('--device', default=None, help='cpu or cuda:0 (default: cuda if available)')
    p.add_argument('--batch-size', type=int, default=1)
    args = p.parse_args(argv)
    if len(args.inputs) < 3:
        p.error('give at least one IMAGE|DIR, then CONFIG and CHECKPOINT')
    *args.images, args.config, args.checkpoint = args.inputs
    return args


def collect(paths: list[str]) -> list[str]:
    """Image files named or inside the named directories (not recursive), in order."""
    files = []
    for path in paths:
        if osp.isdir(path):
            names = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
            files += [osp.join(path, f) for f in names]
        else:
            files.append(path)
    return files


def check_image(path: str) -> tuple[bool, str]:
    """(usable, message) for one input; the message says what is wrong or what will be done."""
    import cv2
    if not osp.exists(path):
        return False, f'{path}: no such file; skipped'
    if not osp.isfile(path) or not os.access(path, os.R_OK):
        return False, f'{path}: not a readable file; skipped'
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        return False, f'{path}: not a decodable image (OpenCV cannot read it); skipped'
    notes = []
    if img.ndim == 2 or img.shape[2] == 1:
        notes.append('grayscale, read as 3-channel')
    elif img.shape[2] == 4:
        notes.append('alpha channel dropped')
    if img.shape[0] * img.shape[1] > LARGE_PIXELS:
        notes.append(f'very large ({img.shape[1]}x{img.shape[0]}), resized by the test pipeline')
    return True, f'{path}: {", ".join(notes)}' if notes else ''


def main(argv=None) -> int:
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            print(f'error: {what} {path} does not exist', file=sys.stderr)
            return 2
    usable = []
    skipped = 0
    for path in collect(args.images):
        ok, message = check_image(path)
        if message:
            print(('note: ' if ok else 'error: ') + message, file=sys.stderr if not ok else sys.stdout)
        if ok:
            usable.append(path)
        else:
            skipped += 1
    if not usable:
        print('error: no usable image among the inputs', file=sys.stderr)
        return 2

    from mmdet.apis import DetInferencer
    from mmengine.config import Config

    import fcos_plugin  # noqa: F401  (registers the plugin; its compat module first)
    score_thr = args.score_thr
    if score_thr is None:
        cfg = Config.fromfile(args.config)
        score_thr = cfg.get('default_hooks', {}).get('visualization', {}).get('score_thr', 0.3)
    from fcos_plugin.compat import UnsafeCheckpointError
    try:
        inferencer = DetInferencer(model=args.config, weights=args.checkpoint, device=args.device,
                                   show_progress=False)
    except UnsafeCheckpointError as e:  # code-running or corrupt checkpoint: one line naming file and object
        print(f'error: {e}', file=sys.stderr)
        return 2
    inferencer(usable, out_dir=args.out_dir, pred_score_thr=score_thr, no_save_pred=False,
               batch_size=args.batch_size)
    print(f'{len(usable)} image(s): pictures in {osp.join(args.out_dir, "vis")}, detections in '
          f'{osp.join(args.out_dir, "preds")} (drawn at score >= {score_thr})'
          + (f'; {skipped} input(s) skipped' if skipped else ''))
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(main())
