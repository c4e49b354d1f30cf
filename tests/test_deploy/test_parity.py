"""ONNX Runtime reproduces the PyTorch detector, checked in two layers that cannot hide each other.

* **Raw head outputs** (:func:`test_raw_head_outputs_match`): for every point of every level, the
  class and centerness probabilities, the decoded (clipped) boxes and the detection scores of the
  graph that mmdeploy exports with our rewriter, against the PyTorch head's own ``predict_by_feat``
  without thresholds, ``nms_pre`` or NMS, on real images (demo val and tiny COCO val). Guards the
  backbone/neck/head graph and the rewriter's score formula and decoding: a score without the
  ``sqrt``, boxes not clipped to the pipeline's image or a wrong stride all fail it.
* **End to end** (:func:`test_trained_detections_and_map_match`): the exported model of the seeded,
  trained session checkpoint (``demo_trained``, bbox mAP > 0.1) against ``tools/test.py``'s model on
  the whole demo val set: the same number of detections per image, every detection paired with one of
  the same class, score within 1e-4 and box within 1e-2 px; only detections whose PyTorch scores are
  exactly tied may be replaced (which of equal candidates NMS or the ``max_per_img`` cut keeps is
  decided by rounding); all COCO metrics equal. Guards thresholding, NMS, ``max_per_img``, rescaling.
"""
from __future__ import annotations

import copy
import json
import os.path as osp
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fcos_plugin.engine import safe_checkpoint_loading

from ..conftest import REPO, run_tool
from .conftest import BOX_ATOL, COCO_CFG, DEMO_CFG, SCORE_ATOL, model_cfg, predict_both

MAP = 'coco/bbox_mAP'
#: Tolerance of the raw comparison, relative to each value (plus a floor for values that are ~0).
RTOL = 1e-4
ATOL = dict(cls=1e-7, ctr=1e-7, scores=1e-7, bboxes=1e-4)  # probabilities; boxes in px


class _RawHead(torch.nn.Module):
    """Detector up to the head's ``predict_by_feat(with_nms=False)``, as a graph for ONNX: the class
    and centerness probabilities (N, P, C) / (N, P, 1) and the decoded boxes (N, P, 4) and scores
    (N, P, C) of all P points, levels concatenated in order. The input's own size is the ``img_shape``
    mmdeploy's detector rewrite passes to the head."""

    def __init__(self, detector, test_cfg):
        super().__init__()
        self.detector, self.test_cfg = detector, test_cfg

    def forward(self, x):
        head = self.detector.bbox_head
        cls, box, ctr = head(self.detector.extract_feat(x))
        bboxes, scores = head.predict_by_feat(
            cls, box, ctr, batch_img_metas=[dict(img_shape=tuple(x.shape[2:]))] * x.shape[0],
            cfg=self.test_cfg, rescale=False, with_nms=False)
        return _flat(cls).sigmoid(), _flat(ctr).sigmoid(), bboxes, scores


def _flat(maps):
    """Per-level (N, K, H, W) maps as (N, P, K), points in mmdet's order (level, row, column)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


def _unfiltered(test_cfg):
    """The test config with every point and class kept: no ``nms_pre``, no threshold, no size filter."""
    cfg = copy.deepcopy(test_cfg)
    cfg.update(nms_pre=-1, score_thr=-1.0, min_bbox_size=-1)
    return cfg


def _raw_pairs(cfg, ckpt: str, deploy_cfg_path: str, work_dir: str, num_images: int, batch_size: int):
    """(PyTorch, ONNX Runtime) raw outputs per batch of the config's first val images."""
    from mmdeploy.apis import build_task_processor
    from mmdeploy.apis.onnx import export

    from fcos_plugin.deploy import build_dataloader, init_scope, load_deploy_cfg, load_model_cfg
    init_scope()
    cfg = load_model_cfg(cfg)
    deploy_cfg = load_deploy_cfg(deploy_cfg_path)
    with safe_checkpoint_loading(ckpt):
        model = build_task_processor(copy.deepcopy(cfg), deploy_cfg, 'cpu').build_pytorch_model(ckpt)
    head = model.bbox_head
    test_cfg = _unfiltered(head.test_cfg)
    loader = build_dataloader(cfg, 'val', cfg.val_dataloader.dataset.pipeline, batch_size, num_images)
    batches = [model.data_preprocessor(data, False) for data in loader]
    shapes = {tuple(b['inputs'].shape) for b in batches}
    assert len(shapes) == 1, f'one input size expected from the test pipeline, got {shapes}'
    prefix = osp.join(work_dir, 'raw')
    names = ['cls', 'ctr', 'bboxes', 'scores']
    # traced with one image, as mmdeploy exports (its box coder rewrite wants the priors' batch of 1)
    # .eval(): torch.onnx.export restores the wrapper's mode afterwards, and a new module is in training
    export(_RawHead(model, test_cfg).eval(), batches[0]['inputs'][:1], prefix, backend='onnxruntime',
           context_info=dict(deploy_cfg=copy.deepcopy(deploy_cfg)), input_names=['input'],
           output_names=names, opset_version=11,
           dynamic_axes={name: {0: 'batch'} for name in ['input', *names]})
    assert not any(m.training for m in model.modules())
    session = ort.InferenceSession(prefix + '.onnx', providers=['CPUExecutionProvider'])
    num_classes = head.cls_out_channels
    pairs = []
    for data in batches:
        x = data['inputs']
        with torch.no_grad():
            cls, box, ctr = head(model.extract_feat(x))
            # the reference: the PyTorch head's own post-processing, fed the pipeline's img_shape
            results = head.predict_by_feat(cls, box, ctr,
                                           batch_img_metas=[s.metainfo for s in data['data_samples']],
                                           cfg=test_cfg, rescale=False, with_nms=False)
        points = sum(m.shape[2] * m.shape[3] for m in cls)
        for r in results:  # every (point, class) pair, point-major: the layout the graph returns
            assert len(r.scores) == points * num_classes
            assert torch.equal(r.labels, torch.arange(num_classes).repeat(points))
        ref = dict(cls=_flat(cls).sigmoid(), ctr=_flat(ctr).sigmoid(),
                   bboxes=torch.stack([r.bboxes.view(points, num_classes, 4)[:, 0] for r in results]),
                   scores=torch.stack([r.scores.view(points, num_classes) for r in results]))
        out = dict(zip(('cls', 'ctr', 'bboxes', 'scores'), session.run(None, {'input': x.numpy()})))
        pairs.append(({k: v.numpy() for k, v in ref.items()}, out))
    return pairs


@pytest.fixture(scope='module', params=['demo', 'tiny_coco'])
def raw_pairs(request, tmp_path_factory):
    if request.param == 'demo':
        trained = request.getfixturevalue('demo_trained')
        onnx_path = request.getfixturevalue('trained_onnx')
        cfg, ckpt, images, batch = model_cfg(DEMO_CFG, trained['data_root']), trained['checkpoint'], 8, 4
    else:
        onnx_path = request.getfixturevalue('coco_onnx')
        cfg = model_cfg(COCO_CFG, request.getfixturevalue('tiny_coco_packed'))
        ckpt, images, batch = request.getfixturevalue('coco_ckpt'), 4, 2
    deploy_cfg = osp.join(osp.dirname(onnx_path), 'deploy_cfg.py')
    return _raw_pairs(cfg, ckpt, deploy_cfg, str(tmp_path_factory.mktemp('raw')), images, batch)


def test_raw_head_outputs_match(raw_pairs):
    worst = {}
    for ref, out in raw_pairs:
        for key, atol in ATOL.items():
            assert out[key].shape == ref[key].shape, key
            err = np.abs(out[key].astype(np.float64) - ref[key])
            worst[key] = max(worst.get(key, 0.0), float((err / (RTOL * np.abs(ref[key]) + atol)).max()))
            np.testing.assert_allclose(out[key], ref[key], rtol=RTOL, atol=atol, err_msg=key)
    # the comparison covers boxes that were clipped: the pipeline's image edge is reached
    assert any((ref['bboxes'] == 0).any() for ref, _ in raw_pairs)
    print('worst error / tolerance per output:', worst)


# ---- end to end on the seeded, trained checkpoint ------------------------------------------------
@pytest.fixture(scope='module')
def trained_predictions(demo_trained, trained_onnx):
    cfg = model_cfg(DEMO_CFG, demo_trained['data_root'])
    return predict_both(cfg, demo_trained['checkpoint'], trained_onnx, indices=None, batch_size=8)


def match_exactly(ref: dict, out: dict) -> int:
    """Pair every PyTorch detection with an ONNX one (same class, score within :data:`SCORE_ATOL`,
    box within :data:`BOX_ATOL`), greedily from the highest score. A PyTorch detection left without
    a partner must be exactly tied (another PyTorch detection has the same float32 score) and an
    unpaired ONNX detection must have that score: which of equal candidates survives NMS or the
    ``max_per_img`` cut is decided by rounding. Returns the number of such tie replacements."""
    assert len(out['scores']) == len(ref['scores'])
    used = np.zeros(len(out['scores']), bool)
    unmatched = []
    for k in np.argsort(-ref['scores'], kind='stable'):
        cand = np.flatnonzero(~used & (out['labels'] == ref['labels'][k])
                              & (np.abs(out['scores'] - ref['scores'][k]) <= SCORE_ATOL)
                              & (np.abs(out['bboxes'] - ref['bboxes'][k]).max(1) <= BOX_ATOL))
        if len(cand):
            used[cand[np.abs(out['scores'][cand] - ref['scores'][k]).argmin()]] = True
        else:
            unmatched.append(k)
    for k in unmatched:
        tied = (ref['scores'] == ref['scores'][k]).sum() >= 2
        cand = np.flatnonzero(~used & (np.abs(out['scores'] - ref['scores'][k]) <= SCORE_ATOL))
        assert tied and len(cand), (f'PyTorch detection label {ref["labels"][k]} score '
                                    f'{ref["scores"][k]:.6f} box {ref["bboxes"][k]} has no ONNX '
                                    'counterpart and is not an exact tie')
        used[cand[0]] = True
    return len(unmatched)


def test_trained_detections_and_map_match(demo_trained, trained_predictions):
    pairs, torch_metrics, onnx_metrics, _ = trained_predictions
    assert torch_metrics[MAP] > 0.1, 'the session checkpoint must be a trained detector'
    assert len(pairs) == 40
    total = sum(len(ref['scores']) for ref, _ in pairs)
    replaced = sum(match_exactly(ref, out) for ref, out in pairs)
    assert total > 40 and replaced <= 0.01 * total, (replaced, total)
    assert {k: v for k, v in torch_metrics.items() if k.startswith('coco/bbox')} == \
        {k: v for k, v in onnx_metrics.items() if k.startswith('coco/bbox')}
    # and it is the model tools/test.py evaluated at the end of training
    assert torch_metrics[MAP] == demo_trained['metrics'][MAP]


def test_test_onnx_tool_reports_the_onnx_map(demo_trained, trained_predictions, trained_onnx, tmp_path):
    out = str(tmp_path / 'metrics.json')
    cmd = run_tool('tools/deploy/test_onnx.py', DEMO_CFG, trained_onnx, '--out', out, '--cfg-options',
                   f'val_dataloader.dataset.data_root={demo_trained["data_root"]}')
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert MAP in proc.stdout
    with open(out) as f:
        report = json.load(f)
    assert report['metrics'][MAP] == trained_predictions[2][MAP]
    assert report['model'] == osp.abspath(trained_onnx)
    # an existing report is not overwritten without --force
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert 'already exist' in proc.stderr and '--force' in proc.stderr
