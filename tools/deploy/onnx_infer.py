#!/usr/bin/env python
"""Detect objects in images with an exported ONNX model -- ONNX Runtime, numpy and OpenCV only.

    python tools/deploy/onnx_infer.py MODEL.onnx IMAGE|DIR [IMAGE|DIR ...] --out-dir DIR
        [--score-thr T] [--threads N] [--force]

The preprocessing (resize keeping the aspect ratio to the test scale, pad, normalise, BGR->RGB, pad
to the size divisor) is read from mmdeploy's ``pipeline.json`` next to the model, the class names
from ``export_meta.json`` (both written by ``export_onnx.py``). For every image it writes
``DIR/<name>.jpg`` with the boxes drawn, and ``DIR/detections.json`` with the boxes in
original-image pixels: ``{"images": [{"image", "width", "height", "detections": [{"bbox": [x1, y1,
x2, y2], "score", "label", "class"}]}], "skipped": [{"image", "error"}]}``.

Images are streamed (one decoded at a time, drawn in place, written before the next is read); an image
that cannot be read is named on one line and skipped, and ``detections.json`` keeps every good image's
result (rewritten atomically as they come). Exit status 1 when some were skipped, 2 when none could be.

This file imports no torch and no OpenMMLab package, so it runs where only ``onnxruntime``,
``numpy`` and ``opencv-python`` are installed; :class:`OrtDetector` is importable from it.
"""
from __future__ import annotations

import argparse
import colorsys
import json
import os
import os.path as osp
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

PIPELINE_FILE = 'pipeline.json'
META_FILE = 'export_meta.json'
IGNORED_TRANSFORMS = ('LoadImageFromFile', 'DefaultFormatBundle', 'Collect', 'ImageToTensor')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
JSON_EVERY_S = 2.0  # detections.json is rewritten (atomically) at most this often while images stream


class InferError(Exception):
    """Bad input (message is for the user)."""


@dataclass
class Preprocess:
    """The image preprocessing of mmdeploy's ``pipeline.json`` (mmdet test pipeline + data
    preprocessor), reproduced with OpenCV/numpy exactly as mmcv does it."""

    resize: tuple[int, int] | None = None  # (w, h) scale
    keep_ratio: bool = True
    pad_size: tuple[int, int] | None = None  # (w, h), before normalisation
    pad_val: float = 0.0
    mean: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    std: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    to_rgb: bool = False
    size_divisor: int = 1

    @classmethod
    def from_pipeline_json(cls, path: str) -> 'Preprocess':
        """Parse mmdeploy's SDK ``pipeline.json``.

        Raises:
            InferError: missing file or a transform this reader does not implement.
        """
        try:
            with open(path) as f:
                tasks = json.load(f)['pipeline']['tasks']
            transforms = next(t for t in tasks if t.get('module') == 'Transform')['transforms']
        except (OSError, ValueError, KeyError, StopIteration) as e:
            raise InferError(f'cannot read the preprocessing from {path} ({type(e).__name__}); '
                             'export the model with tools/deploy/export_onnx.py') from None
        prep = cls()
        normalised = False
        for t in transforms:
            kind = t['type']
            if kind in IGNORED_TRANSFORMS:
                continue
            if kind == 'Resize':
                size = t.get('size', t.get('scale'))
                prep.resize = (int(size[0]), int(size[1]))
                prep.keep_ratio = bool(t.get('keep_ratio', False))
            elif kind == 'Pad' and not normalised and 'size' in t:
                prep.pad_size = (int(t['size'][0]), int(t['size'][1]))
                val = t.get('pad_val', 0)
                val = val.get('img', 0) if isinstance(val, dict) else val
                vals = set(np.atleast_1d(val).tolist())
                if len(vals) != 1:
                    raise InferError(f'{path}: per-channel pad values {val} are not supported')
                prep.pad_val = float(vals.pop())
            elif kind == 'Normalize':
                prep.mean = np.asarray(t['mean'], np.float32)
                prep.std = np.asarray(t['std'], np.float32)
                prep.to_rgb = bool(t.get('to_rgb', False))
                normalised = True
            elif kind == 'Pad' and normalised and 'size_divisor' in t:
                prep.size_divisor = int(t['size_divisor'])
            else:
                raise InferError(f'{path}: transform {t} is not supported by onnx_infer.py')
        return prep

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """Preprocess one BGR uint8 image (H, W, 3).

        Returns:
            tuple: (1, 3, H', W') float32 input and the (w, h) scale factor from the original
            image to the network input.
        """
        h, w = img.shape[:2]
        if self.resize is not None:
            if self.keep_ratio:  # mmcv.rescale_size
                long_edge, short_edge = max(self.resize), min(self.resize)
                scale = min(long_edge / max(h, w), short_edge / min(h, w))
                new_w, new_h = int(w * float(scale) + 0.5), int(h * float(scale) + 0.5)
            else:
                new_w, new_h = self.resize
            img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        scale_factor = (img.shape[1] / w, img.shape[0] / h)
        if self.pad_size is not None:
            pad_w, pad_h = max(self.pad_size[0], img.shape[1]), max(self.pad_size[1], img.shape[0])
            img = cv2.copyMakeBorder(img, 0, pad_h - img.shape[0], 0, pad_w - img.shape[1],
                                     cv2.BORDER_CONSTANT, value=(self.pad_val,) * 3)
        x = img[..., ::-1] if self.to_rgb else img
        x = (x.astype(np.float32) - self.mean) / self.std
        d = self.size_divisor
        out_h, out_w = -(-x.shape[0] // d) * d, -(-x.shape[1] // d) * d
        x = np.pad(x, ((0, out_h - x.shape[0]), (0, out_w - x.shape[1]), (0, 0)))
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), scale_factor


class OrtDetector:
    """An exported end-to-end detector in ONNX Runtime.

    Args:
        model_path: the ``.onnx`` file; ``pipeline.json`` and ``export_meta.json`` are read from
            its directory.
        threads: intra-op threads (0: ONNX Runtime's default).
    """

    def __init__(self, model_path: str, threads: int = 0) -> None:
        import onnxruntime as ort
        if not osp.isfile(model_path):
            raise InferError(f'model {model_path} does not exist')
        model_dir = osp.dirname(osp.abspath(model_path))
        self.preprocess = Preprocess.from_pipeline_json(osp.join(model_dir, PIPELINE_FILE))
        meta_path = osp.join(model_dir, META_FILE)
        meta = {}
        if osp.isfile(meta_path):
            with open(meta_path) as f:
                meta = json.load(f)
        self.classes: list[str] = list(meta.get('classes', []))
        self.score_thr = float((meta.get('test_cfg') or {}).get('score_thr', 0.0))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model_path, options,
                                                providers=['CPUExecutionProvider'])
        except Exception as e:  # noqa: BLE001  (ORT raises its own exception types)
            raise InferError(f'ONNX Runtime cannot load {model_path}: {str(e).splitlines()[0]}') \
                from None
        self.input_name = self.session.get_inputs()[0].name

    def class_name(self, label: int) -> str:
        return self.classes[label] if 0 <= label < len(self.classes) else f'class_{label}'

    def run(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw graph outputs for a preprocessed batch (N, 3, H, W): dets (N, K, 5), labels (N, K)."""
        dets, labels = self.session.run(None, {self.input_name: inputs})
        return dets, labels

    def __call__(self, img: np.ndarray, score_thr: float | None = None) -> list[dict]:
        """Detections of one BGR image (H, W, 3), boxes in its pixels, best first."""
        inputs, (sx, sy) = self.preprocess(img)
        dets, labels = self.run(inputs)
        dets, labels = dets[0], labels[0]
        # score 0: padding rows; compared in float64 (NumPy would round the threshold to float32)
        keep = dets[:, 4].astype(np.float64) > (0.0 if score_thr is None else score_thr)
        out = []
        for (x1, y1, x2, y2, score), label in zip(dets[keep], labels[keep]):
            out.append(dict(bbox=[float(x1 / sx), float(y1 / sy), float(x2 / sx), float(y2 / sy)],
                            score=float(score), label=int(label),
                            **{'class': self.class_name(int(label))}))
        return out


def draw(img: np.ndarray, detections: Sequence[dict], copy: bool = True) -> np.ndarray:
    """The image with boxes and ``class score`` captions (drawn in place when ``copy`` is false)."""
    canvas = img.copy() if copy else img
    thick = max(1, round(max(img.shape[:2]) / 400))
    for det in detections:
        hue = (det['label'] * 0.618034) % 1.0
        color = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, 0.95))[::-1]
        x1, y1, x2, y2 = (int(round(v)) for v in det['bbox'])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thick)
        text = f'{det["class"]} {det["score"]:.2f}'
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, 1)
        y_text = max(y1, th + 2)
        cv2.rectangle(canvas, (x1, y_text - th - 2), (x1 + tw, y_text), color, -1)
        cv2.putText(canvas, text, (x1, y_text - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def read_image(path: str) -> np.ndarray:
    """BGR uint8 image as mmcv's ``LoadImageFromFile`` reads it (OpenCV, colour).

    Raises:
        InferError: missing, unreadable or undecodable file.
    """
    if not osp.exists(path):
        raise InferError(f'image {path}: no such file')
    if not osp.isfile(path):
        raise InferError(f'image {path}: not a regular file')
    try:
        buf = np.fromfile(path, np.uint8)
    except OSError as e:
        raise InferError(f'image {path}: cannot read it ({e.strerror})') from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise InferError(f'image {path}: cannot decode it as an image (corrupt, truncated or not an image)')
    return img


def collect(paths: Sequence[str]) -> list[str]:
    """Image files named, or inside the named directories (not recursive, sorted), in order."""
    files = []
    for path in paths:
        if osp.isdir(path):
            files += [osp.join(path, f) for f in sorted(os.listdir(path))
                      if f.lower().endswith(IMAGE_EXTENSIONS) and osp.isfile(osp.join(path, f))]
        else:
            files.append(path)
    return files


def _write_atomic(path: str, write) -> None:
    # a simpler twin of fcos_plugin.utils.write_atomic (no fsync): this tool must run without torch, which
    # importing anything of fcos_plugin imports. Created with 0o666 & ~umask, as open() would (not
    # tempfile.mkstemp's 0o600), with the target's suffix (cv2.imwrite chooses the format by it).
    tmp = osp.join(osp.dirname(path), f'.tmp-{os.getpid()}-{secrets.token_hex(4)}{osp.splitext(path)[1]}')
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def _output_names(images: Sequence[str]) -> list[str]:
    """``<stem>.jpg`` per image, made unique when two images share a stem."""
    names, seen = [], {}
    for path in images:
        stem = osp.splitext(osp.basename(path))[0]
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(f'{stem}.jpg' if n == 0 else f'{stem}_{n}.jpg')
    return names


def run(model: str, images: Sequence[str], out_dir: str, score_thr: float | None = None,
        threads: int = 0, force: bool = False, log=print, warn=None) -> dict:
    """Detect, draw and write, one image at a time; returns what ``detections.json`` holds.

    Images are streamed: each is decoded, run, drawn in place and written before the next is read, so
    memory holds one image whatever their number. An image that cannot be read is named (``warn``, one
    line) and skipped; ``detections.json`` is rewritten atomically as results come (at most every
    :data:`JSON_EVERY_S` seconds, and at the end, also when a later error stops the run), so every good
    image's result is kept. Existing outputs are refused before anything is written, unless ``force``.
    """
    warn = warn or (lambda s: print(s, file=sys.stderr, flush=True))
    detector = OrtDetector(model, threads)
    if score_thr is not None and score_thr < detector.score_thr:
        log(f'note: the model already drops scores <= {detector.score_thr} (its test_cfg); '
            f'--score-thr {score_thr} cannot bring them back')
    images = collect(images)
    names = _output_names(images)
    json_path = osp.join(out_dir, 'detections.json')
    outputs = [osp.join(out_dir, n) for n in names] + [json_path]
    existing = [p for p in outputs if osp.exists(p)]
    if existing and not force:
        raise InferError(f'{", ".join(existing)} already exist(s); use --force to overwrite')
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise InferError(f'cannot write to {out_dir} ({e.strerror}); give a writable --out-dir') from None
    results, skipped = [], []
    summary = dict(model=osp.abspath(model), classes=detector.classes, images=results, skipped=skipped)

    def dump(tmp):
        with open(tmp, 'w') as f:
            json.dump(summary, f, indent=1)

    last = time.monotonic()
    try:
        for path, name in zip(images, names):
            try:
                img = read_image(path)
            except InferError as e:
                warn(f'error: {e}; skipped')
                skipped.append(dict(image=osp.abspath(path), error=str(e)))
                continue
            dets = detector(img, score_thr)
            height, width = img.shape[:2]
            draw(img, dets, copy=False)
            _write_atomic(osp.join(out_dir, name), lambda tmp, im=img: cv2.imwrite(tmp, im) or _fail(tmp))
            del img
            results.append(dict(image=osp.abspath(path), width=int(width), height=int(height), output=name,
                                detections=dets))
            log(f'{path}: {len(dets)} detections -> {osp.join(out_dir, name)}')
            if time.monotonic() - last >= JSON_EVERY_S:
                _write_atomic(json_path, dump)
                last = time.monotonic()
    finally:  # also on a later error or Ctrl-C: the results so far are kept
        try:
            _write_atomic(json_path, dump)
        except OSError as e:
            warn(f'error: cannot write {json_path} ({e.strerror})')
    log(f'detections of {len(results)} image(s) written to {json_path}'
        + (f'; {len(skipped)} image(s) skipped' if skipped else ''))
    return summary


def _fail(path: str):
    raise InferError(f'cannot write {path}')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model', help='exported .onnx model (with pipeline.json beside it)')
    parser.add_argument('images', nargs='+', help='image files or directories of them')
    parser.add_argument('--out-dir', required=True, help='directory for pictures and JSON')
    parser.add_argument('--score-thr', type=float,
                        help='keep detections scoring above this (default: all the model returns)')
    parser.add_argument('--threads', type=int, default=0, help='ONNX Runtime intra-op threads')
    parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Exit status: 0 when every image was processed, 1 when some were skipped, 2 when none could be."""
    args = parse_args(argv)
    try:
        summary = run(args.model, args.images, args.out_dir, args.score_thr, args.threads, args.force)
    except InferError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except OSError as e:  # the output directory (full, read-only): what was written so far is complete
        print(f'error: cannot write to {args.out_dir} ({e.strerror or e}); free space or give another '
              '--out-dir', file=sys.stderr)
        return 2
    if summary['skipped']:
        n = len(summary['skipped'])
        print(f'error: {n} image(s) skipped (named above)', file=sys.stderr)
        return 1 if summary['images'] else 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
