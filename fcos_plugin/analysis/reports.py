"""Pictures and numbers about a trained detector: training curves from mmengine's log, a sheet of
detection pictures, and a breakdown of what the confident detections are (right, duplicate, wrong
class, badly placed, background)."""
from __future__ import annotations

import glob
import json
import os.path as osp
from collections.abc import Sequence

import numpy as np

__all__ = ['read_scalars', 'training_log', 'plot_training_curves', 'detection_sheet',
           'detection_errors', 'ERROR_KINDS']

# What a detection above the drawing threshold is, judged against the image's ground truth (IoU >= 0.5
# means "on" an object), in the order the checks are made.
ERROR_KINDS = ('correct', 'duplicate', 'wrong_class', 'poor_box', 'background')


def read_scalars(path: str) -> tuple[list[dict], list[dict]]:
    """Training records (with ``loss``) and validation records (with ``coco/bbox_mAP``, and ``iter``:
    the training iteration they follow) of one mmengine ``vis_data/scalars.json``."""
    train, val = [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if 'loss' in r:
                train.append(r)
            elif 'coco/bbox_mAP' in r:
                # the training iteration it follows: its step when mmengine logged it by iteration
                # (log_metric_by_epoch=False); when logged by epoch (step = epoch, smaller), the last
                # logged training iteration, which may be up to one logging interval early
                last = train[-1]['step'] if train else 0
                r['iter'] = r['step'] if r.get('step', 0) >= last else last
                val.append(r)
    return train, val


def training_log(work_dir: str) -> str:
    """The newest ``scalars.json`` under ``work_dir`` that holds training losses."""
    for path in sorted(glob.glob(osp.join(work_dir, '2*', 'vis_data', 'scalars.json')), reverse=True):
        if read_scalars(path)[0]:
            return path
    raise FileNotFoundError(f'no training log with losses under {work_dir}')


def plot_training_curves(scalars: str, out: str, title: str = '') -> None:
    """Every loss term (log scale) and the val bbox mAP / mAP_50 against the iteration, side by side."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    train, val = read_scalars(scalars)
    x_key = 'iter' if 'iter' in train[0] else 'step'
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    xs = [r[x_key] for r in train]
    for key in sorted(k for k in train[0] if k.startswith('loss')):
        ax_loss.plot(xs, [r[key] for r in train], label=key, lw=1.2)
    ax_loss.set(xlabel='iteration', ylabel='loss', yscale='log')
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if val:
        steps = [r['iter'] for r in val]
        for key, style in (('coco/bbox_mAP', 'o-'), ('coco/bbox_mAP_50', 's--')):
            ax_map.plot(steps, [r[key] for r in val], style, label=key.split('/')[1])
    ax_map.set(xlabel='iteration', ylabel='val', ylim=(0, 1))
    ax_map.grid(alpha=0.3)
    ax_map.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def detection_sheet(pictures: Sequence[str], out: str, width: int | None = None, columns: int = 1,
                    jpeg_quality: int = 95) -> np.ndarray:
    """Put pictures (e.g. ``tools/test.py --show-dir``'s ground truth | prediction pairs) into one image,
    in the given order, ``columns`` per row, top to bottom; returns it (BGR).

    ``width``: scale each picture to this many pixels wide first (aspect ratio kept; photos of
    different sizes then line up); otherwise narrower pictures are padded white to the widest."""
    import cv2
    if not pictures:
        raise ValueError('detection_sheet: no pictures given')
    if columns < 1 or width is not None and width < 1:
        raise ValueError(f'detection_sheet: columns ({columns}) and width ({width}) must be >= 1')
    tiles = []
    for p in pictures:
        tile = cv2.imread(p)
        if tile is None:
            raise OSError(f'detection_sheet: cannot read {p}')
        if width is not None and tile.shape[1] != width:
            height = max(1, round(tile.shape[0] * width / tile.shape[1]))
            tile = cv2.resize(tile, (width, height),
                              interpolation=cv2.INTER_AREA if width < tile.shape[1] else cv2.INTER_LINEAR)
        tiles.append(tile)
    tile_width = max(t.shape[1] for t in tiles)
    rows = []
    for start in range(0, len(tiles), columns):
        row = tiles[start:start + columns]
        row_height = max(t.shape[0] for t in row)
        row = [cv2.copyMakeBorder(t, 0, row_height - t.shape[0] + 4, 0, tile_width - t.shape[1]
                                  + (4 if columns > 1 else 0), cv2.BORDER_CONSTANT, value=(255,) * 3)
               for t in row]
        row += [np.full_like(row[0], 255)] * (min(columns, len(tiles)) - len(row))
        rows.append(np.concatenate(row, axis=1))
    sheet = np.concatenate(rows, axis=0)
    if not cv2.imwrite(out, sheet, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality]):
        raise OSError(f'could not write {out}')
    return sheet


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of ``x1y1x2y2`` boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def detection_errors(gts: Sequence[tuple[np.ndarray, np.ndarray]],
                     dets: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                     score_thr: float, iou_thr: float = 0.5) -> dict[str, float]:
    """What the detections scoring ``>= score_thr`` are.

    Per image, detections are taken from the highest score down; each is

    * ``correct``: IoU >= ``iou_thr`` with a not yet matched object of its class (which it then takes),
    * ``duplicate``: IoU >= ``iou_thr`` with an object of its class that a higher-scoring detection took,
    * ``wrong_class``: IoU >= ``iou_thr`` only with objects of other classes,
    * ``poor_box``: 0.1 <= best IoU < ``iou_thr`` with any object,
    * ``background``: best IoU < 0.1.

    Args:
        gts: Per image ``(boxes (G, 4) x1y1x2y2, labels (G,))``.
        dets: Per image ``(boxes (D, 4), scores (D,), labels (D,))``, same coordinates.
        score_thr: Detections below it are not looked at (a drawing threshold).
        iou_thr: IoU that puts a detection on an object.

    Returns:
        dict: the count of each kind in :data:`ERROR_KINDS`, ``detections``, ``objects``, ``missed``
        (objects no detection of their class took) and ``dets_per_object`` (detections with
        IoU >= ``iou_thr`` per object, any class).
    """
    counts = dict.fromkeys(ERROR_KINDS, 0)
    objects = missed = on_object = 0
    for (gt_boxes, gt_labels), (boxes, scores, labels) in zip(gts, dets):
        keep = scores >= score_thr
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        boxes = boxes[np.argsort(-scores, kind='stable')]
        labels = labels[np.argsort(-scores, kind='stable')]
        objects += len(gt_labels)
        taken = np.zeros(len(gt_labels), bool)
        ious = np.zeros((len(boxes), len(gt_labels)))
        if len(boxes) and len(gt_labels):
            ious = _iou(boxes, gt_boxes)
        on_object += int((ious >= iou_thr).sum())
        for i, label in enumerate(labels):
            same = (gt_labels == label) & (ious[i] >= iou_thr)
            if (same & ~taken).any():
                j = np.flatnonzero(same & ~taken)[np.argmax(ious[i][same & ~taken])]
                taken[j] = True
                counts['correct'] += 1
            elif same.any():
                counts['duplicate'] += 1
            elif (ious[i] >= iou_thr).any():
                counts['wrong_class'] += 1
            elif ious.shape[1] and ious[i].max() >= 0.1:
                counts['poor_box'] += 1
            else:
                counts['background'] += 1
        missed += int((~taken).sum())
    detections = sum(counts.values())
    return dict(counts, detections=detections, objects=objects, missed=missed,
                dets_per_object=on_object / max(objects, 1))
