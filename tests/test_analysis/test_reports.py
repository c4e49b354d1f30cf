"""fcos_plugin.analysis.reports: the detection error breakdown and the training-curve picture."""
from __future__ import annotations

import json

import cv2
import numpy as np

from fcos_plugin.analysis import detection_errors, plot_training_curves


def test_each_detection_kind_is_named_once():
    gt_boxes = np.array([[0, 0, 10, 10], [20, 20, 40, 40], [60, 60, 70, 70]], np.float64)
    gt_labels = np.array([0, 1, 2])
    boxes = np.array([
        [0, 0, 10, 10],      # correct (class 0)
        [0, 0, 10, 11],      # duplicate of it, lower score
        [20, 20, 40, 40],    # on object 1 but class 2: wrong class
        [60, 60, 66, 66],    # class 2 on object 2, IoU 0.36: poor box
        [100, 100, 110, 110],  # nothing there: background
    ], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([0, 0, 2, 2, 1])
    r = detection_errors([(gt_boxes, gt_labels)], [(boxes, scores, labels)], score_thr=0.0)
    assert {k: r[k] for k in ('correct', 'duplicate', 'wrong_class', 'poor_box', 'background')} == dict(
        correct=1, duplicate=1, wrong_class=1, poor_box=1, background=1)
    assert r['detections'] == 5 and r['objects'] == 3 and r['missed'] == 2
    assert r['dets_per_object'] == 3 / 3  # three detections with IoU >= 0.5 on some object
    # the threshold drops detections before they are judged; order is by score, not by input order
    r = detection_errors([(gt_boxes, gt_labels)], [(boxes[::-1], scores[::-1], labels[::-1])], score_thr=0.75)
    assert r['correct'] == 1 and r['duplicate'] == 1 and r['detections'] == 2


def test_training_curve_picture_from_an_mmengine_log(tmp_path):
    log = tmp_path / 'scalars.json'
    with open(log, 'w') as f:
        for it in range(10, 110, 10):
            f.write(json.dumps(dict(iter=it, step=it, loss=2.0 / it, loss_cls=1.0 / it, loss_bbox=1.0 / it,
                                    lr=0.001, time=1.0)) + '\n')
            if it % 50 == 0:
                val = {'coco/bbox_mAP': it / 200, 'coco/bbox_mAP_50': it / 150, 'step': it}
                f.write(json.dumps(val) + '\n')
    out = str(tmp_path / 'curve.png')
    plot_training_curves(str(log), out, 'test')
    img = cv2.imread(out)
    assert img is not None and img.shape[1] > img.shape[0] > 200
