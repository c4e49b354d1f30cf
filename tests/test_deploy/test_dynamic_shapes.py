"""A dynamic-shape export is right at every input size, not only at the size it was traced with.

The TorchScript exporter records Python arithmetic on ``x.shape`` as constants; the backbone's TF "SAME"
padding (mmcv ``Conv2dAdaptivePadding``) computed that way cropped or padded every input to the export
size. Two checks, both on the session's trained demo checkpoint and its export at the config's 320:

* raw outputs -- class/centerness probabilities, decoded boxes and scores at every point -- of a graph
  traced at 320 with dynamic height and width, against the PyTorch head at 256, 416, 640 and 384x544;
* detections of the end-to-end model (``tools/deploy/export_onnx.py``, default dynamic deploy config)
  against PyTorch's on a val image resized to 320 and placed on gray canvases (512 top-left, 512
  bottom-right, 640 bottom-right) and resized to a non-square 288x416, as mmdet's usual ``keep_ratio`` +
  ``pad_size_divisor`` pipelines and users' own pre-processing feed it.

A static export refuses other sizes with a named error (``test_static_model_refuses_other_sizes``).
"""
from __future__ import annotations

import copy
import os.path as osp

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fcos_plugin.engine import safe_checkpoint_loading

from .conftest import DEMO_CFG, model_cfg
from .test_parity import ATOL, _flat, _RawHead, _unfiltered, match_exactly

#: (height, width) of the raw comparison; the export is traced at the config's 320x320
RAW_SIZES = [(256, 256), (416, 416), (640, 640), (384, 544)]
#: test_parity's absolute floors, but 1e-3 relative (ONNX Runtime picks other convolution blockings at
#: other sizes: rounding differences of ~1e-4 relative reach the probabilities) and boxes to 1e-3 px (a box
#: side is ``point - distance`` of two values of a few hundred px: float32 rounding survives the
#: cancellation near the image edge). A wrong padding moves values by far more than that.
RTOL_SIZES = 1e-3
TOL = dict(ATOL, bboxes=1e-3)
#: canvas (h, w), where the 320x320 image goes on it; None: the image itself resized to (h, w)
CANVASES = [((320, 320), 'top-left'), ((512, 512), 'top-left'), ((512, 512), 'bottom-right'),
            ((640, 640), 'bottom-right'), ((288, 416), None)]
GRAY = 128  # the demo pipeline's pad value


@pytest.fixture(scope='module')
def setup(demo_trained, trained_onnx):
    from mmdeploy.apis import build_task_processor

    from fcos_plugin.deploy import build_dataloader, init_scope, load_deploy_cfg, load_model_cfg
    init_scope()
    cfg = load_model_cfg(model_cfg(DEMO_CFG, demo_trained['data_root']))
    deploy_cfg = load_deploy_cfg(osp.join(osp.dirname(trained_onnx), 'deploy_cfg.py'))
    task = build_task_processor(copy.deepcopy(cfg), deploy_cfg, 'cpu')
    with safe_checkpoint_loading(demo_trained['checkpoint']):
        model = task.build_pytorch_model(demo_trained['checkpoint'])
    loader = build_dataloader(cfg, 'val', cfg.val_dataloader.dataset.pipeline, 1, 4)
    # uint8 (3, 320, 320) images as the val pipeline gives them, before the data preprocessor
    images = [data['inputs'][0] for data in loader]
    return dict(cfg=cfg, deploy_cfg=deploy_cfg, task=task, model=model, images=images)


class _DynamicRawHead(_RawHead):
    """``test_parity._RawHead`` with the input size passed to the head as a traced tensor, as mmdeploy's
    detector rewrite passes it for dynamic shapes (a Python ``x.shape`` would clip every box to the size
    the graph was traced at)."""

    def forward(self, x):
        head = self.detector.bbox_head
        cls, box, ctr = head(self.detector.extract_feat(x))
        bboxes, scores = head.predict_by_feat(
            cls, box, ctr, batch_img_metas=[dict(img_shape=torch._shape_as_tensor(x)[2:])] * x.shape[0],
            cfg=self.test_cfg, rescale=False, with_nms=False)
        return _flat(cls).sigmoid(), _flat(ctr).sigmoid(), bboxes, scores


def _batch(model, img: torch.Tensor, size, where):
    """The data preprocessor's output for ``img`` resized to ``size`` or placed on a gray canvas."""
    from mmdet.structures import DetDataSample
    h, w = size
    if where is None:
        canvas = torch.nn.functional.interpolate(img[None].float(), size=(h, w), mode='bilinear',
                                                 align_corners=False)[0].round().clamp(0, 255).byte()
    else:
        canvas = torch.full((3, h, w), GRAY, dtype=torch.uint8)
        ih, iw = img.shape[1:]
        y, x = (0, 0) if where == 'top-left' else (h - ih, w - iw)
        canvas[:, y:y + ih, x:x + iw] = img
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        return model.data_preprocessor(dict(inputs=[canvas], data_samples=[sample]), False)


def _reference(model, x: torch.Tensor, test_cfg) -> list:
    """The PyTorch head's own outputs for ``x``, in the graph's layout (see ``test_parity._raw_pairs``):
    probabilities, decoded boxes clipped to the input and scores of every point, no threshold or NMS."""
    head = model.bbox_head
    with torch.no_grad():
        cls, box, ctr = head(model.extract_feat(x))
        results = head.predict_by_feat(cls, box, ctr, batch_img_metas=[dict(img_shape=tuple(x.shape[2:]))],
                                       cfg=test_cfg, rescale=False, with_nms=False)
    points, classes = sum(m.shape[2] * m.shape[3] for m in cls), head.cls_out_channels
    return [_flat(cls).sigmoid().numpy(), _flat(ctr).sigmoid().numpy(),
            torch.stack([r.bboxes.view(points, classes, 4)[:, 0] for r in results]).numpy(),
            torch.stack([r.scores.view(points, classes) for r in results]).numpy()]


def test_raw_outputs_match_at_other_sizes(setup, tmp_path):
    from mmdeploy.apis.onnx import export
    model = setup['model']
    test_cfg = _unfiltered(model.bbox_head.test_cfg)
    raw = _DynamicRawHead(model, test_cfg).eval()
    base = _batch(model, setup['images'][0], (320, 320), None)['inputs']
    names = ['cls', 'ctr', 'bboxes', 'scores']
    prefix = str(tmp_path / 'raw')
    export(raw, base, prefix, backend='onnxruntime',
           context_info=dict(deploy_cfg=copy.deepcopy(setup['deploy_cfg'])), input_names=['input'],
           output_names=names, opset_version=13,
           dynamic_axes={'input': {0: 'batch', 2: 'height', 3: 'width'},
                         **{n: {0: 'batch', 1: 'points'} for n in names}})
    session = ort.InferenceSession(prefix + '.onnx', providers=['CPUExecutionProvider'])
    for size in RAW_SIZES:
        for img in setup['images'][:2]:
            x = _batch(model, img, size, None)['inputs']
            assert tuple(x.shape[2:]) == size
            ref = _reference(model, x, test_cfg)
            out = session.run(None, {'input': x.numpy()})
            for name, r, o in zip(names, ref, out):
                assert o.shape == r.shape, (size, name, o.shape, r.shape)
                np.testing.assert_allclose(o, r, rtol=RTOL_SIZES, atol=TOL[name], err_msg=f'{name} at {size}')


def test_end_to_end_detections_match_at_other_sizes(setup, trained_onnx):
    model = setup['model']
    ort_model = setup['task'].build_backend_model([trained_onnx])
    found = {}
    for size, where in CANVASES:
        for i, img in enumerate(setup['images']):
            data = _batch(model, img, size, where)
            with torch.no_grad():
                ref = model.predict(data['inputs'], copy.deepcopy(data['data_samples']))[0]
                out = ort_model(data['inputs'], copy.deepcopy(data['data_samples']), mode='predict')[0]
            ref, out = ({k: v.numpy() for k, v in s.pred_instances.to_dict().items()} for s in (ref, out))
            match_exactly(ref, out)
            found[(size, where, i)] = int((ref['scores'] >= 0.3).sum())
    # the comparison is about real detections: the trained model finds objects at every placement
    for (size, where, _), n in found.items():
        assert n > 0, f'no confident PyTorch detection at {size} {where}: {found}'


def test_static_model_refuses_other_sizes(demo_trained, tmp_path):
    """A static export (``--shape``) names its size when given another one."""
    from fcos_plugin.deploy import DeployError, export_onnx
    from fcos_plugin.deploy.evaluation import latency_input
    cfg = model_cfg(DEMO_CFG, demo_trained['data_root'])
    paths = export_onnx(cfg, demo_trained['checkpoint'], str(tmp_path), onnx_name='static.onnx',
                        shape=(256, 256), log=lambda s: None)
    with pytest.raises(DeployError, match='256x256'):
        latency_input(cfg, paths['onnx'], shape=(320, 320))
    session = ort.InferenceSession(paths['onnx'], providers=['CPUExecutionProvider'])
    with pytest.raises(Exception, match='(?i)dimension|shape'):
        session.run(None, {'input': np.zeros((1, 3, 320, 320), np.float32)})
