"""Inference on one's own images with the PyTorch model: tools/infer.py and mmdet's DetInferencer give
what tools/test.py gives on the same images, need no packed dataset, and survive bad inputs."""
from __future__ import annotations

import glob
import json
import os.path as osp
import pickle
import subprocess

import cv2
import numpy as np
import pytest

from fcos_plugin.engine import safe_checkpoint_loading

from ..conftest import REPO, load_checkpoint_file, run_tool

CFG = osp.join(REPO, 'configs', 'fcos_effb0_demo.py')
NUM = 4


@pytest.fixture(scope='module')
def reference(demo_trained, tmp_path_factory):
    """tools/test.py's predictions for the first NUM val images of the trained demo model."""
    work = str(tmp_path_factory.mktemp('infer_ref'))
    root = demo_trained['data_root'] + '/'
    preds = osp.join(work, 'preds.pkl')
    proc = subprocess.run(run_tool('tools/test.py', CFG, demo_trained['checkpoint'], '--work-dir', work,
                                   '--out', preds, '--cfg-options',
                                   f'test_dataloader.dataset.data_root={root}',
                                   f'test_dataloader.dataset.indices={NUM}'),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(preds, 'rb') as f:
        results = pickle.load(f)
    by_name = {osp.basename(r['img_path']): r['pred_instances'] for r in results}
    assert len(by_name) == NUM and sum(len(p['scores']) for p in by_name.values()) > 0
    return by_name


def _assert_same(ref, labels, scores, bboxes, floor: float = 0.1):
    """Every detection scoring >= ``floor`` in one is in the other: same label, score within 1e-4, box
    within 1e-2 px. Matched by content, not position: tools/test.py runs batches of 4 in channels_last,
    the inferencer single images in NCHW, so float rounding may reorder equal scores; the floor keeps
    the comparison away from the 0.05 threshold and the 100-box cut, where rounding may swap members."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    bboxes = np.asarray(bboxes, np.float64).reshape(-1, 4)
    r_labels, r_scores, r_boxes = (ref['labels'].numpy(), ref['scores'].numpy().astype(np.float64),
                                   ref['bboxes'].numpy().astype(np.float64))
    assert (r_scores >= floor).sum() > 0, 'the reference must have confident detections'
    for (la, sc, bx), (lb, sb, bb) in (((labels, scores, bboxes), (r_labels, r_scores, r_boxes)),
                                       ((r_labels, r_scores, r_boxes), (labels, scores, bboxes))):
        used = np.zeros(len(sb), bool)
        for k in np.flatnonzero(sc >= floor):
            cand = np.flatnonzero(~used & (lb == la[k]) & (np.abs(sb - sc[k]) <= 1e-4)
                                  & (np.abs(bb - bx[k]).max(1) <= 1e-2))
            assert len(cand), f'detection {la[k]} {sc[k]:.5f} {bx[k]} has no counterpart'
            used[cand[0]] = True


def _config_without_data(tmp_path) -> str:
    """The demo config with its data root somewhere that does not exist: a user's machine without the
    packed dataset (this checkout's own data/demo must not make the test pass)."""
    path = tmp_path / 'no_data.py'
    path.write_text(f"_base_ = [{CFG!r}]\n"
                    "test_dataloader = dict(dataset=dict(data_root='/nonexistent/demo/'))\n")
    return str(path)


def test_infer_tool_equals_test_tool_and_skips_bad_inputs(demo_trained, reference, tmp_path):
    images = [osp.join(demo_trained['data_root'], 'val2017', name) for name in sorted(reference)]
    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'notes.jpg').write_text('not an image')
    src = cv2.imread(images[0])
    cv2.imwrite(str(bad / 'gray.png'), cv2.cvtColor(src, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(bad / 'rgba.png'), cv2.cvtColor(src, cv2.COLOR_BGR2BGRA))
    out = str(tmp_path / 'out')
    proc = subprocess.run(run_tool('tools/infer.py', *images, str(bad), str(tmp_path / 'missing.jpg'),
                                   _config_without_data(tmp_path), demo_trained['checkpoint'],
                                   '--out-dir', out, '--score-thr', '0.4'),
                          capture_output=True, text=True, cwd=REPO)
    # some inputs skipped, the rest processed (a traceback also exits 1: the summary line tells them apart)
    assert proc.returncode == 1 and '6 image(s): pictures in' in proc.stdout, proc.stderr[-3000:]
    assert '2 input(s) skipped' in proc.stdout and 'drawn at score >= 0.4' in proc.stdout
    assert 'notes.jpg: not a decodable image' in proc.stderr and 'missing.jpg: no such file' in proc.stderr
    assert 'gray.png: grayscale' in proc.stdout and 'rgba.png: alpha channel dropped' in proc.stdout
    for name, ref in reference.items():
        with open(osp.join(out, 'preds', osp.splitext(name)[0] + '.json')) as f:
            pred = json.load(f)
        _assert_same(ref, pred['labels'], pred['scores'], pred['bboxes'])
        assert cv2.imread(osp.join(out, 'vis', name)) is not None
    # grayscale and alpha versions are processed too (as 3-channel images)
    written = {osp.basename(p) for p in glob.glob(osp.join(out, 'preds', '*.json'))}
    assert written >= {'gray.json', 'rgba.json'}


def test_det_inferencer_works_without_the_packed_dataset(demo_trained, reference, tmp_path):
    """mmdet's DetInferencer builds the config's test set with lazy_init=True just for its metainfo;
    the config here points at a data root that does not exist. Class names come from the checkpoint."""
    from mmdet.apis import DetInferencer
    from mmengine.config import Config
    cfg = Config.fromfile(CFG)
    cfg.test_dataloader.dataset.data_root = '/nonexistent/demo/'
    with safe_checkpoint_loading(demo_trained['checkpoint']):
        inferencer = DetInferencer(model=cfg, weights=demo_trained['checkpoint'], device='cpu',
                                   show_progress=False)
    assert inferencer.model.dataset_meta['classes'][0] == 'red_circle'
    # the palette too comes from the checkpoint (the pictures are drawn in the training colours)
    meta = load_checkpoint_file(demo_trained['checkpoint'])['meta']
    assert list(map(tuple, inferencer.model.dataset_meta['palette'])) == list(
        map(tuple, meta['dataset_meta']['palette']))
    for name, ref in reference.items():
        img = osp.join(demo_trained['data_root'], 'val2017', name)
        pred = inferencer(img, return_datasamples=True)['predictions'][0].pred_instances
        _assert_same(ref, pred.labels, pred.scores, pred.bboxes)
    inferencer(img, out_dir=str(tmp_path))  # and drawing works
    assert cv2.imread(str(tmp_path / 'vis' / name)) is not None
    with pytest.raises(Exception, match='nonexistent'):  # the dataset itself still says what is missing
        from mmdet.registry import DATASETS
        DATASETS.build(cfg.test_dataloader.dataset)
