"""The shipped recipe learns: fcos_effb0_demo.py, seeded and deterministic, trained LEARN_ITERS
iterations (tools/train.py, the session's shared ``demo_trained`` run) detects the demo val objects.

What it guards: the whole training path -- Lite0 weights loaded, dynamic assignment, the three loss
terms, the sqrt(cls x centerness) score used for ranking, AdamW schedule. Measured with the shipped
code: bbox mAP 0.20, mAP_50 0.43 (tests/conftest.py LEARN_* settings). Broken once each, locally, the
same run gave: positives assigned to a random object's label 0.00x, box loss sign flipped 0.00x, score
from (1 - centerness) 0.0xx -- all far below the floors.
"""
from __future__ import annotations

MAP_FLOOR = 0.10
MAP50_FLOOR = 0.25


def test_seeded_short_training_detects_the_demo_objects(demo_trained):
    out, metrics = demo_trained['output'], demo_trained['metrics']
    assert 'loaded 288 of the 296 tensors' in out  # the ImageNet weights really were loaded
    assert metrics['coco/bbox_mAP'] >= MAP_FLOOR, metrics
    assert metrics['coco/bbox_mAP_50'] >= MAP50_FLOOR, metrics
    losses = [r for r in demo_trained['log'] if 'loss' in r]
    assert losses[-1]['loss'] < 0.6 * losses[0]['loss']
    # the assignment grew with the predictions: several positives per object, good IoU
    assert losses[-1]['pos_per_gt'] > 2 and losses[-1]['pos_iou'] > 0.6
