"""Export to ONNX through mmdeploy, check exported models and quantize them to int8.

The command-line tools in ``tools/deploy/`` are thin wrappers around these functions (evaluation
and latency are in :mod:`fcos_plugin.deploy.evaluation`):

* :func:`export_onnx` -- ``mmdeploy.apis.torch2onnx`` + ``export2SDK`` into a complete mmdeploy work
  directory (``MODEL.onnx``, ``deploy.json``, ``pipeline.json``, ``detail.json``), plus
  ``deploy_cfg.py`` (the deploy config actually used) and ``export_meta.json`` (class names, shapes);
* :func:`check_input_shape` -- the input size of an exported model against its deploy config and
  ``export_meta.json``, before anything expensive runs;
* :func:`quantize_int8` -- ONNX Runtime static int8 quantization of the convolutions, calibrated on
  the config's train set.

Every user error raises :class:`DeployError` with a message that names the file and what to do; the
tools print it without a traceback. Files are written to a temporary name and renamed into place.
"""
from __future__ import annotations

import copy
import json
import os
import os.path as osp
import shutil
import tempfile
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config

from ..paths import config_path
from ..utils import abbreviate_keys, refuse_existing, state_dict_diff
from ..utils import write_json_atomic as _write_json_atomic
from . import rewriters  # noqa: F401  (registers the rewriters before any export)
from .rewriters import EXPORT_CFG_KEY, check_exportable_test_cfg

__all__ = [
    'DEFAULT_DEPLOY_CFG', 'DeployError', 'ExportResult', 'STATIC_DEPLOY_CFG', 'SDK_FILES',
    'build_dataloader', 'check_checkpoint', 'check_input_shape', 'check_onnx_model', 'ensure_free',
    'export_onnx', 'init_scope', 'load_deploy_cfg', 'load_model_cfg', 'onnx_input_dims', 'quantize_int8',
    'static_input_shape', 'write_json_atomic'
]

DEFAULT_DEPLOY_CFG = config_path('deploy', 'detection_onnxruntime_dynamic.py')
STATIC_DEPLOY_CFG = config_path('deploy', 'detection_onnxruntime_static-512x512.py')
#: Files mmdeploy's ``export2SDK`` writes next to the model, and ours.
SDK_FILES = ('deploy.json', 'pipeline.json', 'detail.json')
META_FILE = 'export_meta.json'
DEPLOY_CFG_FILE = 'deploy_cfg.py'
#: ONNX domains of standard operators.
STANDARD_DOMAINS = ('', 'ai.onnx')


class DeployError(Exception):
    """Bad input to an export/evaluation/quantization step (message is for the user)."""


ExportResult = Dict[str, str]
Log = Callable[[str], None]


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def init_scope() -> None:
    """Register fcos_plugin and mmdet modules and make ``mmdet`` the default registry scope."""
    from mmdet.utils import register_all_modules

    import fcos_plugin  # noqa: F401  (registers the plugin, applies fcos_plugin.compat)
    register_all_modules(init_default_scope=True)


def ensure_free(paths: Sequence[str], force: bool) -> None:
    """Raise :class:`DeployError` naming the ``paths`` that exist, unless ``force``."""
    refuse_existing(paths, force, DeployError)


def write_json_atomic(obj, path: str, force: bool = False) -> None:
    """Write JSON to ``path`` through a temporary file in the same directory (no partial files).

    Raises:
        DeployError: ``path`` exists and ``force`` is False.
    """
    ensure_free([path], force)
    _write_json_atomic(obj, path)


# ------------------------------------------------------------------------------------------------
# configs and checkpoints
# ------------------------------------------------------------------------------------------------
def load_model_cfg(config: Union[str, Config], cfg_options: Optional[dict] = None) -> Config:
    """The model config with a top-level ``test_pipeline`` (mmdeploy reads it from there)."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        if not osp.isfile(config):
            raise DeployError(f'config {config} does not exist')
        cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if 'test_pipeline' not in cfg:
        try:
            cfg.test_pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
        except AttributeError:
            raise DeployError(f'config {cfg.filename}: no test_pipeline (neither top-level nor in '
                              'test_dataloader.dataset)') from None
    head = cfg.model.get('bbox_head', {})
    test_cfg = cfg.model.get('test_cfg') or head.get('test_cfg')
    if head.get('type') == 'TunedFCOSHead' and test_cfg:  # (the head's defaults are exportable)
        try:
            check_exportable_test_cfg(test_cfg)
        except ValueError as e:
            raise DeployError(f'config {cfg.filename}: {e}') from None
    return cfg


def load_deploy_cfg(deploy_cfg: Union[str, Config, None] = None,
                    shape: Optional[Tuple[int, int]] = None) -> Config:
    """Load and check an mmdeploy deploy config (ONNX Runtime, end-to-end detection only).

    Args:
        deploy_cfg: path or config; None for :data:`DEFAULT_DEPLOY_CFG` (dynamic shapes), or
            :data:`STATIC_DEPLOY_CFG` when ``shape`` is given.
        shape: (height, width) for a static model; overrides ``onnx_config.input_shape`` and
            removes the dynamic axes.

    Raises:
        DeployError: unknown file, or a config this project cannot export or run.
    """
    if deploy_cfg is None:
        deploy_cfg = STATIC_DEPLOY_CFG if shape is not None else DEFAULT_DEPLOY_CFG
    if isinstance(deploy_cfg, Config):
        cfg, name = copy.deepcopy(deploy_cfg), deploy_cfg.filename or '<deploy config>'
    else:
        if not osp.isfile(deploy_cfg):
            raise DeployError(f'deploy config {deploy_cfg} does not exist (see configs/deploy/)')
        cfg, name = Config.fromfile(deploy_cfg), deploy_cfg

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise DeployError(f'unsupported deploy config {name}: {what}. Supported: ONNX Runtime, '
                              'mmdet ObjectDetection end2end, outputs [dets, labels] (see '
                              'configs/deploy/)')

    backend = cfg.get('backend_config', {}).get('type')
    need(backend == 'onnxruntime', f"backend_config.type is {backend!r}, not 'onnxruntime'")
    onnx_cfg = cfg.get('onnx_config', {})
    need(onnx_cfg.get('type') == 'onnx', f"onnx_config.type is {onnx_cfg.get('type')!r}")
    codebase = cfg.get('codebase_config', {})
    need(codebase.get('type') == 'mmdet' and codebase.get('task') == 'ObjectDetection',
         f"codebase_config is {codebase.get('type')!r}/{codebase.get('task')!r}")
    need(codebase.get('model_type', 'end2end') == 'end2end',
         f"model_type is {codebase.get('model_type')!r}")
    need('post_processing' in codebase, 'codebase_config.post_processing is missing')
    need('partition_config' not in cfg, 'model partitioning is not supported')
    need(list(onnx_cfg.get('input_names', [])) == ['input'], 'input_names must be [input]')
    need(list(onnx_cfg.get('output_names', [])) == ['dets', 'labels'],
         f"output_names are {onnx_cfg.get('output_names')}")
    if shape is not None:
        h, w = (int(v) for v in shape)
        if h <= 0 or w <= 0:
            raise DeployError(f'--shape {h} {w}: height and width must be positive')
        cfg.onnx_config.input_shape = [w, h]  # mmdeploy's order is (width, height)
        cfg.onnx_config.pop('dynamic_axes', None)
    if not onnx_cfg.get('dynamic_axes') and not cfg.onnx_config.get('input_shape'):
        raise DeployError(f'deploy config {name} is static but has no onnx_config.input_shape; '
                          'pass --shape H W')
    return cfg


def static_input_shape(deploy_cfg: Config) -> Optional[List[int]]:
    """(width, height) of a static deploy config, None for dynamic shapes."""
    from mmdeploy.utils import get_input_shape, is_dynamic_shape
    return None if is_dynamic_shape(deploy_cfg) else get_input_shape(deploy_cfg)


def _deploy_cfg_for(model_path: str, deploy_cfg: Union[str, Config, None]) -> Config:
    """The deploy config given, else the one exported next to the model, else the default."""
    if deploy_cfg is None:
        beside = osp.join(osp.dirname(osp.abspath(model_path)), DEPLOY_CFG_FILE)
        if osp.isfile(beside):
            deploy_cfg = beside
    return load_deploy_cfg(deploy_cfg)


def onnx_input_dims(path: str) -> List[Union[int, str, None]]:
    """The dimensions of an ONNX model's ``input``: ints where static, axis names (or None) where dynamic.

    Raises:
        DeployError: unreadable model, or no graph input named ``input``.
    """
    import onnx
    try:
        graph = onnx.load(path, load_external_data=False).graph
    except Exception as e:  # noqa: BLE001
        raise DeployError(f'{path} is not a valid ONNX model: {str(e).splitlines()[0]}') from None
    for value in graph.input:
        if value.name == 'input':
            return [d.dim_value if d.HasField('dim_value') else (d.dim_param or None)
                    for d in value.type.tensor_type.shape.dim]
    raise DeployError(f'{path} has no graph input named "input" (inputs: '
                      f'{", ".join(v.name for v in graph.input)})')


def check_input_shape(path: str, deploy_cfg: Config) -> Optional[Tuple[int, int]]:
    """Check the input size of an exported model against its deploy config and export metadata.

    A static model (fixed height and width in the graph) must be run with a deploy config of the
    same static size, or the val/calibration pipeline would feed it other sizes and ONNX Runtime
    would fail after minutes of work; the ``export_meta.json`` beside it, if any, must say the same.

    Returns:
        (height, width) of a static model, None for dynamic height and width.

    Raises:
        DeployError: the graph, the deploy config and ``export_meta.json`` disagree (says which).
    """
    dims = onnx_input_dims(path)
    if len(dims) != 4:
        raise DeployError(f'{path}: input has {len(dims)} dimensions, expected (N, 3, H, W)')
    graph_hw = tuple(dims[2:]) if all(isinstance(d, int) for d in dims[2:]) else None
    cfg_wh = static_input_shape(deploy_cfg)
    cfg_hw = tuple(int(v) for v in cfg_wh[::-1]) if cfg_wh else None
    show = lambda hw: f'static {hw[0]}x{hw[1]} (height x width)' if hw else 'dynamic'
    if graph_hw is not None and cfg_hw != graph_hw:
        raise DeployError(f'{path} is {show(graph_hw)} but deploy config {deploy_cfg.filename or ""} is '
                          f'{show(cfg_hw)}: pass the deploy config it was exported with (--deploy-cfg; '
                          f'default: the {DEPLOY_CFG_FILE} beside the model)')
    meta_path = osp.join(osp.dirname(osp.abspath(path)), META_FILE)
    if osp.isfile(meta_path):
        with open(meta_path) as f:
            meta_hw = json.load(f).get('input_shape_hw')
        meta_hw = tuple(int(v) for v in meta_hw) if meta_hw else None
        if meta_hw != graph_hw:
            raise DeployError(f'{path} is {show(graph_hw)} but {meta_path} says {show(meta_hw)}: the '
                              'model is not the one exported into its directory')
    return graph_hw


def _build_model(model_cfg: Config) -> torch.nn.Module:
    from mmdet.registry import MODELS
    init_scope()
    return MODELS.build(copy.deepcopy(model_cfg.model))


def check_checkpoint(model: torch.nn.Module, checkpoint: str, config_name: str = '') -> dict:
    """Check that ``checkpoint`` holds exactly the weights of ``model``.

    Returns:
        dict: the checkpoint's ``meta`` (may be empty).

    Raises:
        DeployError: unreadable file, or missing / unexpected / differently shaped tensors (named).
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from fcos_plugin.compat import UnsafeCheckpointError
    if not osp.isfile(checkpoint):
        raise DeployError(f'checkpoint {checkpoint} does not exist')
    try:
        ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    except UnsafeCheckpointError as e:
        raise DeployError(str(e)) from None
    except Exception as e:  # noqa: BLE001  (any unreadable file: say which and why)
        raise DeployError(f'cannot read checkpoint {checkpoint}: {type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""}') from None
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeployError(f'checkpoint {checkpoint} holds no state_dict of tensors')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    own = model.state_dict()
    missing, unexpected, mismatched = state_dict_diff(own, state)
    mismatched = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in mismatched]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f'missing keys ({len(missing)}): {abbreviate_keys(missing)}')
        if unexpected:
            parts.append(f'unexpected keys ({len(unexpected)}): {abbreviate_keys(unexpected)}')
        if mismatched:
            parts.append(f'shape mismatches, checkpoint vs model ({len(mismatched)}): '
                         f'{abbreviate_keys(mismatched)}')
        raise DeployError(f'checkpoint {checkpoint} does not match config {config_name}: '
                          + '; '.join(parts))
    return ckpt.get('meta', {}) or {}


def _class_names(model_cfg: Config, meta: dict, num_classes: int) -> List[str]:
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


def check_onnx_model(path: str) -> List[str]:
    """``onnx.checker`` plus: only standard ONNX operators. Returns the op types."""
    import onnx
    try:
        model = onnx.load(path)
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001
        raise DeployError(f'{path} is not a valid ONNX model: {str(e).splitlines()[0]}') from None
    custom = sorted({f'{n.domain}::{n.op_type}' for n in model.graph.node
                     if n.domain not in STANDARD_DOMAINS})
    if custom:
        raise DeployError(f'{path} uses non-standard operators: {", ".join(custom)}')
    return sorted({n.op_type for n in model.graph.node})


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------
def export_onnx(config: Union[str, Config],
                checkpoint: str,
                work_dir: str,
                onnx_name: str = 'end2end.onnx',
                deploy_cfg: Union[str, Config, None] = None,
                shape: Optional[Tuple[int, int]] = None,
                force: bool = False,
                cfg_options: Optional[dict] = None,
                log: Log = print) -> ExportResult:
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
    from mmdeploy.apis import torch2onnx
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

    model = _build_model(model_cfg)
    meta = check_checkpoint(model, checkpoint, str(model_cfg.filename or config))
    num_classes = model.bbox_head.num_classes
    if type(model.bbox_head).__name__ != 'TunedFCOSHead':
        log(f'warning: {type(model.bbox_head).__name__} is exported with mmdeploy\'s stock '
            'post-processing, whose score threshold semantics can differ from PyTorch\'s')
    del model
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
        # torch2onnx edits the model config's test pipeline in place: give it a copy
        torch2onnx(dummy, tmp, onnx_name, deploy_cfg, copy.deepcopy(model_cfg), checkpoint, 'cpu')
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


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------
def _static_pipeline(pipeline: list, input_shape: Optional[List[int]]) -> list:
    """mmdeploy's own rewrite of a test pipeline for a static input (Resize/Pad to the shape)."""
    from mmdeploy.codebase.mmdet.deploy.object_detection import process_model_config
    if input_shape is None:
        return pipeline
    tmp = Config(dict(test_pipeline=copy.deepcopy(pipeline)))
    return list(process_model_config(tmp, [''], input_shape).test_pipeline)


def build_dataloader(model_cfg: Config, split: str, pipeline: list,
                     batch_size: Optional[int] = None, num_images: Optional[int] = None):
    """The config's ``train``/``val`` dataloader with ``pipeline``, in order, without workers
    (the train set unfiltered, for calibration); the first ``num_images`` images if given."""
    from mmengine.runner import Runner
    dl = copy.deepcopy(model_cfg[f'{split}_dataloader'])
    dl.dataset.pipeline = pipeline
    if num_images is not None:
        dl.dataset.indices = num_images
    if batch_size is not None:
        dl.batch_size = batch_size
    dl.num_workers = 0  # the LMDB reads are cheap; workers would copy the process
    dl.persistent_workers = False
    dl.pop('batch_sampler', None)
    dl.sampler = dict(type='DefaultSampler', shuffle=False)
    if split == 'train':
        dl.dataset.test_mode = True  # keep every image, no annotation filtering for calibration
        dl.dataset.pop('filter_cfg', None)
    try:
        return Runner.build_dataloader(dl)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DeployError(f'cannot open the {split} set of {model_cfg.filename}: '
                          f'{str(e).splitlines()[0]}') from None


# ------------------------------------------------------------------------------------------------
# int8 quantization
# ------------------------------------------------------------------------------------------------
def _calibration_batches(model_cfg: Config, deploy_cfg: Config,
                         num_images: int) -> Iterator[np.ndarray]:
    """(1, 3, H, W) float32 inputs from the train set, preprocessed exactly as at test time."""
    from mmdet.registry import MODELS
    pipeline = _static_pipeline(model_cfg.test_pipeline, static_input_shape(deploy_cfg))
    pipeline = [t for t in pipeline if t['type'] != 'LoadAnnotations']
    loader = build_dataloader(model_cfg, 'train', pipeline, batch_size=1, num_images=num_images)
    preprocessor = MODELS.build(copy.deepcopy(model_cfg.model.data_preprocessor))
    for data in loader:
        yield preprocessor(data, False)['inputs'].numpy()


def quantize_int8(model_cfg: Union[str, Config],
                  onnx_in: str,
                  onnx_out: str,
                  deploy_cfg: Union[str, Config, None] = None,
                  num_calib: int = 32,
                  per_channel: bool = True,
                  reduce_range: bool = False,
                  calibrate_method: str = 'MinMax',
                  force: bool = False,
                  log: Log = print) -> Dict[str, object]:
    """Static int8 quantization (ONNX Runtime, QDQ) of every ``Conv`` of an exported model.

    Only convolutions -- backbone, neck and head -- are quantized (int8 weights, uint8
    activations); score computation, box decoding, top-k and NMS stay float. Calibration uses
    ``num_calib`` images of the config's train set through the test pipeline.

    Returns:
        dict: ``quantized`` and ``excluded`` node counts, ``seconds``.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    init_scope()
    model_cfg = load_model_cfg(model_cfg)
    deploy_cfg = _deploy_cfg_for(onnx_in, deploy_cfg)
    if not osp.isfile(onnx_in):
        raise DeployError(f'model {onnx_in} does not exist')
    if osp.abspath(onnx_in) == osp.abspath(onnx_out):
        raise DeployError('the int8 model must be written to another file than the float model')
    ensure_free([onnx_out], force)
    check_onnx_model(onnx_in)
    check_input_shape(onnx_in, deploy_cfg)  # before calibration: a wrong size fails there
    try:
        method = getattr(CalibrationMethod, calibrate_method)
    except AttributeError:
        raise DeployError(f'unknown calibration method {calibrate_method!r}; use MinMax, Entropy '
                          'or Percentile') from None
    batches = list(_calibration_batches(model_cfg, deploy_cfg, num_calib))
    if not batches:
        raise DeployError(f'no calibration images in the train set of {model_cfg.filename}')

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {'input': x}

        def rewind(self):
            self._it = iter(batches)

    model = onnx.load(onnx_in)
    convs = [n.name for n in model.graph.node if n.op_type == 'Conv']
    out_dir = osp.dirname(osp.abspath(onnx_out))
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir, prefix='.quant-')
    t0 = time.time()
    try:
        pre = osp.join(tmp, 'pre.onnx')
        try:
            # shape inference + graph optimisation, as ONNX Runtime recommends before quantizing
            quant_pre_process(onnx_in, pre, skip_symbolic_shape=True)
        except Exception as e:  # noqa: BLE001  (optional step: quantize the raw export instead)
            log(f'note: quant_pre_process failed ({type(e).__name__}); quantizing the model as is')
            shutil.copy(onnx_in, pre)
        pre_model = onnx.load(pre)
        convs = [n.name for n in pre_model.graph.node if n.op_type == 'Conv']
        others = [n.name for n in pre_model.graph.node if n.op_type != 'Conv']
        out_tmp = osp.join(tmp, 'int8.onnx')
        quantize_static(
            pre, out_tmp, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=['Conv'],
            nodes_to_quantize=convs, nodes_to_exclude=others, per_channel=per_channel,
            reduce_range=reduce_range, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=method,
            extra_options=dict(ActivationSymmetric=False, WeightSymmetric=True))
        check_onnx_model(out_tmp)
        os.replace(out_tmp, onnx_out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.time() - t0
    log(f'int8 model written to {onnx_out}: {len(convs)} Conv nodes quantized, '
        f'{len(batches)} calibration images, {seconds:.1f} s')
    return dict(quantized=len(convs), excluded=len(others), calibration_images=len(batches),
                seconds=seconds)
