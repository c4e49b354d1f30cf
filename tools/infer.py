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

Images are streamed: each is decoded once (as the config's ``LoadImageFromFile`` decodes it), run,
drawn with OpenCV in place on that same array and written before the next is read (``--batch-size N``
holds N at a time), so memory does not grow with the number or the size of the images beyond one
decoded batch (see benchmarks/bench_infer_memory.py). Inputs that are not images (missing, unreadable,
corrupt or truncated) are named on one line each and skipped; the others are still processed, and what
was written stays. Grayscale images are read as 3-channel, an alpha channel is dropped (the model sees
what ``tools/test.py`` would), and each is named in the output. Exit status: 0 when every input was
processed, 1 when some were skipped (the last line says how many), 2 when none could be.
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
    p.add_argument('--batch-size', type=int, default=1, help='images decoded and run together')
    args = p.parse_args(argv)
    if len(args.inputs) < 3:
        p.error('give at least one IMAGE|DIR, then CONFIG and CHECKPOINT')
    if args.batch_size < 1:
        p.error('--batch-size must be at least 1')
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


def output_stems(paths: list[str]) -> list[str]:
    """``<stem>`` per image, made unique (``<stem>_1`` ...) when two images share a stem."""
    stems, seen = [], {}
    for path in paths:
        stem = osp.splitext(osp.basename(path))[0]
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f'{stem}_{n}')
    return stems


def header_notes(path: str) -> list[str]:
    """What reading ``path`` as a 3-channel image will do, from its header only (no decoding)."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            mode, (w, h) = im.mode, im.size
    except Exception:  # noqa: BLE001  (a format PIL does not know: OpenCV may still read it)
        return []
    notes = []
    if mode in ('1', 'L', 'I', 'I;16', 'I;16B', 'I;16L', 'F'):
        notes.append('grayscale, read as 3-channel')
    elif mode in ('LA', 'RGBA', 'PA', 'La', 'RGBa'):
        notes.append('alpha channel dropped')
    if w * h > LARGE_PIXELS:
        notes.append(f'very large ({w}x{h}), resized by the test pipeline')
    return notes


def read_image(path: str, color_type: str = 'color', backend: str = 'cv2'):
    """(image or None, message): the image decoded once, as the config's ``LoadImageFromFile`` decodes it
    (mmcv, same flag and backend, so the model sees what ``tools/test.py`` would); the message says what is
    wrong or what was done."""
    import mmcv
    if not osp.exists(path):
        return None, f'{path}: no such file; skipped'
    if not osp.isfile(path) or not os.access(path, os.R_OK):
        return None, f'{path}: not a readable file; skipped'
    try:
        with open(path, 'rb') as f:
            data = f.read()
        img = mmcv.imfrombytes(data, flag=color_type, backend=backend) if data else None
    except Exception as e:  # noqa: BLE001  (decoders raise many types on bad data)
        img = None
        why = f' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""})'
    else:
        why = ''
    if img is None:
        return None, f'{path}: not a decodable image (corrupt, truncated or not an image{why}); skipped'
    if img.ndim == 2:
        import cv2
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    notes = header_notes(path)
    return img, f'{path}: {", ".join(notes)}' if notes else ''


def draw(img, labels, scores, bboxes, classes, palette, score_thr: float):
    """Boxes and ``class score`` captions drawn with OpenCV in place on ``img`` (no copy, no figure)."""
    import colorsys

    import cv2
    thick = max(1, round(max(img.shape[:2]) / 400))
    for label, score, (x1, y1, x2, y2) in zip(labels, scores, bboxes):
        if score < score_thr:
            continue
        if palette:
            rgb = palette[label % len(palette)]
        else:
            rgb = [255 * c for c in colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.8, 0.95)]
        color = tuple(int(c) for c in rgb[::-1])
        x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
        cv2.rectangle(img, (x1, y1), (x2, y2), color, thick)
        name = classes[label] if 0 <= label < len(classes) else f'class_{label}'
        text = f'{name} {score:.2f}'
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, 1)
        y_text = max(y1, th + 2)
        cv2.rectangle(img, (x1, y_text - th - 2), (x1 + tw, y_text), color, -1)
        cv2.putText(img, text, (x1, y_text - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return img


def _loader_args(cfg) -> tuple[str, str]:
    """``color_type`` and ``imdecode_backend`` of the config's test ``LoadImageFromFile``."""
    try:
        pipeline = cfg.test_dataloader.dataset.pipeline
    except AttributeError:
        pipeline = []
    for t in pipeline:
        if str(t.get('type', '')).split('.')[-1] == 'LoadImageFromFile':
            return t.get('color_type', 'color'), t.get('imdecode_backend', 'cv2')
    return 'color', 'cv2'


def main(argv=None) -> int:
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            print(f'error: {what} {path} does not exist', file=sys.stderr)
            return 2
    paths = collect(args.images)
    if not any(osp.isfile(p) for p in paths):
        for p in paths:
            print(f'error: {p}: {"not a readable file" if osp.exists(p) else "no such file"}; skipped',
                  file=sys.stderr)
        print('error: no usable image among the inputs', file=sys.stderr)
        return 2
    vis_dir, pred_dir = osp.join(args.out_dir, 'vis'), osp.join(args.out_dir, 'preds')
    try:
        for d in (vis_dir, pred_dir):
            os.makedirs(d, exist_ok=True)
    except OSError as e:
        print(f'error: cannot write to {args.out_dir} ({e.strerror}); give a writable --out-dir',
              file=sys.stderr)
        return 2

    import cv2
    from mmdet.apis import DetInferencer

    import fcos_plugin  # noqa: F401  (registers the plugin)
    from fcos_plugin.engine import UnsafeCheckpointError, safe_checkpoint_loading
    from fcos_plugin.utils import DiskFullError, quiet_upstream_warnings, write_atomic, write_json_atomic
    quiet_upstream_warnings()
    try:
        with safe_checkpoint_loading(args.checkpoint):
            inferencer = DetInferencer(model=args.config, weights=args.checkpoint, device=args.device,
                                       show_progress=False)
    except UnsafeCheckpointError as e:  # code-running or corrupt checkpoint: one line naming file and object
        print(f'error: {e}', file=sys.stderr)
        return 2
    score_thr = args.score_thr
    if score_thr is None:
        score_thr = inferencer.cfg.get('default_hooks', {}).get('visualization', {}).get('score_thr', 0.3)
    color_type, backend = _loader_args(inferencer.cfg)
    meta = inferencer.model.dataset_meta or {}
    classes, palette = list(meta.get('classes') or []), meta.get('palette')
    if not (isinstance(palette, (list, tuple)) and all(isinstance(c, (list, tuple)) and len(c) == 3
                                                         for c in palette)):
        palette = []  # mmdet's 'random' or none: one colour per label below

    done = skipped = 0

    def run_batch(batch) -> None:
        nonlocal done, skipped
        try:
            preds = inferencer([img for _, _, img in batch], return_datasamples=True,
                               batch_size=len(batch))['predictions']
        except Exception as e:  # noqa: BLE001  (one bad image must not stop the others)
            for path, _, _ in batch:
                print(f'error: {path}: inference failed ({type(e).__name__}: {str(e).splitlines()[0]}); '
                      'skipped', file=sys.stderr)
            skipped += len(batch)
            return
        for (path, stem, img), pred in zip(batch, preds):
            inst = pred.pred_instances
            labels, scores = inst.labels.tolist(), inst.scores.tolist()
            bboxes = inst.bboxes.tolist()
            write_json_atomic(dict(labels=labels, scores=scores, bboxes=bboxes),
                              osp.join(pred_dir, stem + '.json'))
            draw(img, labels, scores, bboxes, classes, palette, score_thr)
            ext = osp.splitext(path)[1].lower()
            name = stem + (ext if ext in IMAGE_EXTENSIONS else '.jpg')

            def save(tmp, im=img):
                if not cv2.imwrite(tmp, im):
                    raise OSError(f'OpenCV cannot write {tmp}')
            write_atomic(osp.join(vis_dir, name), save)
            done += 1
            print(f'{path}: {len(labels)} detection(s) -> {osp.join(pred_dir, stem + ".json")}', flush=True)

    batch = []
    try:
        for path, stem in zip(paths, output_stems(paths)):
            img, message = read_image(path, color_type, backend)
            if message:
                print(('note: ' if img is not None else 'error: ') + message,
                      file=sys.stderr if img is None else sys.stdout, flush=True)
            if img is None:
                skipped += 1
                continue
            batch.append((path, stem, img))
            del img
            if len(batch) == args.batch_size:
                run_batch(batch)
                batch = []
        if batch:
            run_batch(batch)
            batch = []
    except (DiskFullError, OSError) as e:  # the output directory: stop, what was written is complete
        where = f'{e}' if isinstance(e, DiskFullError) else \
            f'cannot write to {args.out_dir} ({e.strerror or e})'
        print(f'error: {where}; {done} image(s) written before it; free space or give another --out-dir',
              file=sys.stderr)
        return 2
    if not done:
        print(f'error: no usable image among the inputs ({skipped} skipped)', file=sys.stderr)
        return 2
    print(f'{done} image(s): pictures in {vis_dir}, detections in {pred_dir} (drawn at score >= {score_thr})'
          + (f'; {skipped} input(s) skipped' if skipped else ''))
    return 1 if skipped else 0


if __name__ == '__main__':
    sys.exit(main())
