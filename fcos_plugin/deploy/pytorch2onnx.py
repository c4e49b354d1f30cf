"""Export a trained detector to an end-to-end ONNX model with mmdeploy (as mmdeploy's
``apis/pytorch2onnx.py`` does), into a complete mmdeploy work directory: ``MODEL.onnx`` and mmdeploy's SDK
files (``deploy.json``, ``pipeline.json``, ``detail.json``), plus ``deploy_cfg.py`` (the deploy config
actually used) and ``export_meta.json`` (class names, shapes, operators). Files are written into a
temporary directory and renamed into place, so an interrupted export leaves nothing half-written.

The model is built once, as mmdeploy builds it (``build_pytorch_model``), loaded strictly
(:func:`~fcos_plugin.deploy.checks.check_checkpoint`) and handed to mmdeploy's ``export`` with the input
and the rewriter context ``torch2onnx`` would give it (:func:`_torch2onnx`), so the graph is the one
``torch2onnx`` writes.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
import shutil
import tempfile
import time

import numpy as np
import torch
from mmengine.config import Config

from .checks import check_checkpoint, check_onnx_model
from .common import DEPLOY_CFG_FILE, META_FILE, SDK_FILES, DeployError, Log, ensure_free, init_scope
from .configs import load_deploy_cfg, load_model_cfg, static_input_shape
from .rewriters import EXPORT_CFG_KEY

__all__ = ['export_onnx']


def _class_names(model_cfg: Config, meta: dict, num_classes: int) -> list[str]:
    classes = (meta.get('dataset_meta') or {}).get('classes')
    if not classes:
        for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
            classes = (model_cfg.get(key, {}).get('dataset', {}).get('metainfo') or {}).get(
                'classes')
            if classes:
                break
    classes = list(classes or [])
    if len(classes) != num_classes:
        classes = [f'class_{i}' for i in range(num_classes)]
    return classes


def _pipeline_shapes(model_cfg: Config, deploy_cfg: Config) -> dict:
    """``pipeline_img_shape`` and ``pipeline_input_shape`` (see
    :data:`fcos_plugin.deploy.rewriters.EXPORT_CFG_KEY`): the ``img_shape`` and the network input
    size the test pipeline and data preprocessor give every image; both None when they depend on
    the image. Two dummy images of opposite aspect ratios go through mmdeploy's own input code."""
    from mmdeploy.apis import build_task_processor
    from mmdet.registry import MODELS
    shapes = set()
    preprocessor = MODELS.build(copy.deepcopy(model_cfg.model.data_preprocessor))
    for hw in ((240, 400), (400, 240)):
        task = build_task_processor(copy.deepcopy(model_cfg), deploy_cfg, 'cpu')
        data, inputs = task.create_input(np.full((*hw, 3), 128, np.uint8),
                                         static_input_shape(deploy_cfg), preprocessor)
        shapes.add((tuple(int(v) for v in data['data_samples'][0].img_shape),
                    tuple(int(v) for v in inputs.shape[2:])))
    if len(shapes) != 1:
        return dict(pipeline_img_shape=None, pipeline_input_shape=None)
    img_shape, input_shape = shapes.pop()
    return dict(pipeline_img_shape=list(img_shape), pipeline_input_shape=list(input_shape))


def _torch2onnx(task, model: torch.nn.Module, img: np.ndarray, work_dir: str, save_file: str,
                deploy_cfg: Config) -> None:
    """mmdeploy 1.3.1's ``apis.torch2onnx`` for a model already built and loaded: the same dummy input
    (``task.create_input`` through the model's data preprocessor) and the same call of mmdeploy's
    ``apis.onnx.export``, whose ``RewriterContext`` applies the deploy config's rewriters."""
    from mmdeploy.apis.core.pipeline_manager import no_mp
    from mmdeploy.apis.onnx import export
    from mmdeploy.utils import Backend, get_backend, get_dynamic_axes, get_input_shape, get_onnx_config

    data, inputs = task.create_input(img, get_input_shape(deploy_cfg),
                                     data_preprocessor=getattr(model, 'data_preprocessor', None))
    if isinstance(inputs, list) and len(inputs) == 1:
        inputs = inputs[0]
    onnx_cfg = get_onnx_config(deploy_cfg)
    backend = get_backend(deploy_cfg).value
    names = onnx_cfg['input_names'] + onnx_cfg['output_names']
    with no_mp():
        export(model, inputs, input_metas=dict(data_samples=data['data_samples'], mode='predict'),
               output_path_prefix=osp.join(work_dir, osp.splitext(osp.basename(save_file))[0]),
               backend=backend, input_names=onnx_cfg['input_names'], output_names=onnx_cfg['output_names'],
               context_info=dict(deploy_cfg=deploy_cfg), opset_version=onnx_cfg.get('opset_version', 11),
               dynamic_axes=get_dynamic_axes(deploy_cfg, names),
               verbose=not onnx_cfg.get('strip_doc_string', True) or onnx_cfg.get('verbose', False),
               keep_initializers_as_inputs=onnx_cfg.get('keep_initializers_as_inputs', True),
               # mmdeploy: ncnn needs exact blob counts, which the onnx optimizer's merging breaks
               optimize=onnx_cfg.get('optimize', False) and backend != Backend.NCNN.value)


def export_onnx(config: str | Config,
                checkpoint: str,
                work_dir: str,
                onnx_name: str = 'end2end.onnx',
                deploy_cfg: str | Config | None = None,
                shape: tuple[int, int] | None = None,
                force: bool = False,
                cfg_options: dict | None = None,
                log: Log = print) -> dict[str, str]:
    """Export a detector end to end (NMS inside) to ONNX with mmdeploy, plus mmdeploy's SDK files.

    Args:
        config: model config (path or Config).
        checkpoint: weights; must match the config exactly.
        work_dir: output directory (one model per directory: the SDK files name it).
        onnx_name: file name of the model inside ``work_dir``.
        deploy_cfg: mmdeploy deploy config; see :func:`load_deploy_cfg`.
        shape: (height, width) for a static model.
        force: overwrite existing output files.
        cfg_options: overrides of the model config.
        log: progress messages.

    Returns:
        dict: paths of ``onnx``, ``deploy_cfg``, ``meta`` and the SDK files.

    The graph takes ``input`` (N, 3, H, W), normalised as the model's data preprocessor does, and
    returns ``dets`` (N, K, 5) ``x1y1x2y2`` + score in input pixels and ``labels`` (N, K); rows with
    score 0 are padding.
    """
    from mmdeploy.apis import build_task_processor
    from mmdeploy.backend.sdk.export_info import export2SDK

    if osp.basename(onnx_name) != onnx_name or not onnx_name.endswith('.onnx'):
        raise DeployError(f'--onnx-name {onnx_name!r}: give a file name ending in .onnx '
                          '(the directory is --work-dir)')
    init_scope()
    model_cfg = load_model_cfg(config, cfg_options)
    deploy_cfg = load_deploy_cfg(deploy_cfg, shape)
    deploy_cfg.onnx_config.save_file = onnx_name
    outputs = [osp.join(work_dir, n) for n in (onnx_name, *SDK_FILES, META_FILE, DEPLOY_CFG_FILE)]
    ensure_free(outputs, force)

    # create_input edits the task's model config (its test pipeline) in place: the task gets a copy
    task = build_task_processor(copy.deepcopy(model_cfg), deploy_cfg, 'cpu')
    model = task.build_pytorch_model()  # as torch2onnx builds it; the weights are loaded strictly below
    meta = check_checkpoint(model, checkpoint, str(model_cfg.filename or config))
    num_classes = model.bbox_head.num_classes
    if type(model.bbox_head).__name__ != 'TunedFCOSHead':
        log(f'warning: {type(model.bbox_head).__name__} is exported with mmdeploy\'s stock '
            'post-processing, whose score threshold semantics can differ from PyTorch\'s')
    shapes = _pipeline_shapes(model_cfg, deploy_cfg)
    deploy_cfg[EXPORT_CFG_KEY] = shapes
    min_size = (model_cfg.model.get('test_cfg') or {}).get('min_bbox_size', -1)
    if min_size > 0:
        log(f'warning: min_bbox_size={min_size} is applied to network-input pixels in the graph '
            '(PyTorch applies it after rescaling to the original image)')

    os.makedirs(work_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=work_dir, prefix='.export-')
    try:
        input_shape = static_input_shape(deploy_cfg)
        # an image with an aspect ratio other than the test scale's, so nothing is special-cased
        dummy = np.random.RandomState(0).randint(0, 256, (480, 640, 3), np.uint8)
        log(f'exporting {checkpoint} -> {osp.join(work_dir, onnx_name)} '
            f'({"static " + "x".join(map(str, input_shape[::-1])) if input_shape else "dynamic"})')
        t0 = time.time()
        _torch2onnx(task, model, dummy, tmp, onnx_name, deploy_cfg)
        ops = check_onnx_model(osp.join(tmp, onnx_name))
        export2SDK(deploy_cfg, copy.deepcopy(model_cfg), tmp, pth=osp.abspath(checkpoint),
                   device='cpu')
        deploy_cfg.dump(osp.join(tmp, DEPLOY_CFG_FILE))
        with open(osp.join(tmp, META_FILE), 'w') as f:
            json.dump(dict(
                model=onnx_name, classes=_class_names(model_cfg, meta, num_classes),
                input_name='input', output_names=['dets', 'labels'],
                input_shape_hw=input_shape[::-1] if input_shape else None,
                **shapes, test_cfg=model_cfg.model.get('test_cfg'),
                config=osp.abspath(model_cfg.filename) if model_cfg.filename else None,
                checkpoint=osp.abspath(checkpoint), operators=ops), f, indent=1)
        for name in os.listdir(tmp):
            os.replace(osp.join(tmp, name), osp.join(work_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f'exported in {time.time() - t0:.1f} s: {", ".join(outputs)}')
    keys = ('onnx', 'deploy_json', 'pipeline_json', 'detail_json', 'meta', 'deploy_cfg')
    return dict(zip(keys, outputs))
