"""tools/deploy/onnx_infer.py: torch-free preprocessing identical to mmdeploy's, pictures and JSON in
original-image pixels for a real photo, and clear errors for bad input."""
from __future__ import annotations

import copy
import glob
import importlib.util
import json
import os
import os.path as osp
import shutil
import stat
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from fcos_plugin.datasets.demo_data import DEMO_CLASSES

from ..conftest import REPO
from .conftest import DEMO_CFG, model_cfg

TOOL = osp.join(REPO, 'tools', 'deploy', 'onnx_infer.py')


def _load_tool():
    spec = importlib.util.spec_from_file_location('onnx_infer', TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules['onnx_infer'] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _photos(tiny_coco: str, n: int) -> list[str]:
    return sorted(glob.glob(osp.join(tiny_coco, 'val2017', '*.jpg')))[:n]


def infer(*args: str) -> subprocess.CompletedProcess:
    """The tool in a fresh interpreter in which ``import torch`` fails."""
    code = ('import runpy, sys; sys.modules["torch"] = None; '
            f'sys.argv = [{TOOL!r}] + sys.argv[1:]; runpy.run_path({TOOL!r}, run_name="__main__")')
    return subprocess.run([sys.executable, '-c', code, *args], capture_output=True, text=True, cwd=REPO)


def test_preprocessing_equals_mmdeploy_create_input(demo_packed, demo_onnx, tiny_coco):
    from mmdeploy.apis import build_task_processor

    from fcos_plugin.deploy import init_scope, load_deploy_cfg, load_model_cfg
    init_scope()
    cfg = load_model_cfg(model_cfg(DEMO_CFG, demo_packed))
    task = build_task_processor(copy.deepcopy(cfg), load_deploy_cfg(
        osp.join(osp.dirname(demo_onnx), 'deploy_cfg.py')), 'cpu')
    preprocessor = task.build_pytorch_model().data_preprocessor
    prep = _load_tool().Preprocess.from_pipeline_json(osp.join(osp.dirname(demo_onnx), 'pipeline.json'))
    demo_img = sorted(glob.glob(osp.join(demo_packed, 'val2017', '*.jpg')))[0]
    for path in [*_photos(tiny_coco, 2), demo_img]:
        data, expected = task.create_input(path, data_preprocessor=preprocessor)
        x, (sx, sy) = prep(cv2.imread(path))
        assert x.shape == tuple(expected.shape)
        np.testing.assert_array_equal(x, expected.numpy())
        assert (sx, sy) == pytest.approx(tuple(data['data_samples'][0].scale_factor), abs=1e-12)


def test_writes_pictures_and_json_in_original_pixels(demo_onnx, tiny_coco, tmp_path):
    photos = _photos(tiny_coco, 2)
    out = tmp_path / 'out'
    proc = infer(demo_onnx, *photos, '--out-dir', str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / 'detections.json') as f:
        result = json.load(f)
    assert result['classes'] == list(DEMO_CLASSES)
    assert [r['image'] for r in result['images']] == [osp.abspath(p) for p in photos]

    # the same detections as mmdeploy's backend model, which maps boxes back the same way
    from mmdeploy.apis import build_task_processor

    from fcos_plugin.deploy import init_scope, load_deploy_cfg, load_model_cfg
    init_scope()
    cfg = load_model_cfg(DEMO_CFG)
    task = build_task_processor(copy.deepcopy(cfg), load_deploy_cfg(
        osp.join(osp.dirname(demo_onnx), 'deploy_cfg.py')), 'cpu')
    backend = task.build_backend_model([demo_onnx])
    for path, record in zip(photos, result['images']):
        img = cv2.imread(path)
        assert (record['height'], record['width']) == img.shape[:2]
        drawn = cv2.imread(str(out / record['output']))
        assert drawn is not None and drawn.shape == img.shape
        assert np.abs(drawn.astype(int) - img.astype(int)).max() > 100  # boxes are drawn
        data, inputs = task.create_input(path, data_preprocessor=backend.data_preprocessor)
        with torch.no_grad():
            ref = backend(inputs, data['data_samples'], mode='predict')[0].pred_instances
        dets = record['detections']
        assert len(dets) == len(ref) > 0
        np.testing.assert_allclose([d['bbox'] for d in dets], ref.bboxes.numpy(), atol=1e-3)
        np.testing.assert_allclose([d['score'] for d in dets], ref.scores.numpy(), atol=1e-6)
        assert [d['class'] for d in dets] == [DEMO_CLASSES[i] for i in ref.labels.tolist()]

    # --score-thr keeps the detections above it
    thr = float(np.median([d['score'] for d in result['images'][0]['detections']]))
    proc = infer(demo_onnx, photos[0], '--out-dir', str(tmp_path / 'thr'), '--score-thr', str(thr))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / 'thr' / 'detections.json') as f:
        kept = json.load(f)['images'][0]['detections']
    assert kept and all(d['score'] > thr for d in kept)
    assert len(kept) == sum(d['score'] > thr for d in result['images'][0]['detections'])


def test_bad_inputs_get_clear_messages_and_write_nothing(demo_onnx, tiny_coco, tmp_path):
    photo = _photos(tiny_coco, 1)[0]
    not_image = tmp_path / 'notes.jpg'
    not_image.write_text('not a JPEG')
    out = tmp_path / 'out'
    for args, message in [
            ((str(not_image),), f'image {not_image}: cannot decode it as an image'),
            ((str(tmp_path / 'missing.jpg'),), f'image {tmp_path / "missing.jpg"}: no such file')]:
        proc = infer(demo_onnx, photo, *args, '--out-dir', str(out), '--force')
        # the bad one named on one line and skipped, the good one kept, exit 1 saying how many
        assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
        assert any(line.startswith(f'error: {message}') and line.endswith('; skipped')
                   for line in proc.stderr.splitlines()), proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == 'error: 1 image(s) skipped (named above)'
        with open(out / 'detections.json') as f:
            result = json.load(f)
        assert [r['image'] for r in result['images']] == [osp.abspath(photo)]
        assert [r['image'] for r in result['skipped']] == [osp.abspath(args[0])]
    shutil.rmtree(out)

    assert infer(demo_onnx, photo, '--out-dir', str(out)).returncode == 0
    stamp = os.stat(out / 'detections.json').st_mtime_ns
    proc = infer(demo_onnx, photo, '--out-dir', str(out))
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert 'already exist' in proc.stderr and '--force' in proc.stderr
    assert os.stat(out / 'detections.json').st_mtime_ns == stamp
    assert infer(demo_onnx, photo, '--out-dir', str(out), '--force').returncode == 0
    assert not [p for p in os.listdir(out) if p.startswith('.tmp-')]
    plain = tmp_path / 'plain.txt'
    plain.write_text('')  # outputs get the mode open() gives a new file here (not mkstemp's 0o600)
    modes = {stat.S_IMODE(os.stat(out / n).st_mode) for n in os.listdir(out)}
    assert modes == {stat.S_IMODE(os.stat(plain).st_mode)}, [oct(m) for m in modes]

    # a model without its pipeline.json (copied away from the work dir)
    lone = tmp_path / 'lone'
    lone.mkdir()
    shutil.copy(demo_onnx, lone / 'fcos.onnx')
    proc = infer(str(lone / 'fcos.onnx'), photo, '--out-dir', str(tmp_path / 'o2'))
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert 'pipeline.json' in proc.stderr and 'export_onnx.py' in proc.stderr


def test_streams_skips_a_truncated_image_and_keeps_results_before_a_later_failure(demo_onnx, tiny_coco,
                                                                                   tmp_path):
    """Issue 16 item 7: a directory is read (was "no such file"), a truncated JPEG in the middle is named on
    one line and skipped, the images after it are processed, and a later failure (a picture that cannot be
    written) keeps every earlier result in detections.json (was: every image decoded first, one corrupt
    image discarded all results)."""
    src = tmp_path / 'photos'
    src.mkdir()
    photos = _photos(tiny_coco, 3)
    for name, photo in zip(('a', 'c', 'd'), photos):
        shutil.copy(photo, src / f'{name}.jpg')
    data = open(photos[0], 'rb').read()
    (src / 'b.jpg').write_bytes(data[:len(data) // 2])
    out = tmp_path / 'out'
    (out / 'd.jpg').mkdir(parents=True)  # the last picture cannot be written
    proc = infer(demo_onnx, str(src), '--out-dir', str(out), '--force')
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert errors[0] == f'error: image {src / "b.jpg"}: cannot decode it as an image (corrupt, truncated ' \
                        'or not an image); skipped', errors
    assert len(errors) == 2 and f'cannot write to {out}' in errors[1], errors
    with open(out / 'detections.json') as f:
        result = json.load(f)
    assert [r['image'] for r in result['images']] == [str(src / 'a.jpg'), str(src / 'c.jpg')]
    assert all(r['detections'] for r in result['images'])
    assert [r['image'] for r in result['skipped']] == [str(src / 'b.jpg')]
    assert cv2.imread(str(out / 'c.jpg')) is not None
    assert not [p for p in os.listdir(out) if p.startswith('.tmp-')]
