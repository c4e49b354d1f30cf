"""Checks of what goes into and comes out of an export, each raising :class:`DeployError` with a message
that names the file and what to do:

* :func:`check_checkpoint` -- the checkpoint holds exactly the model's weights (mmengine's strict load;
  what does not fit is named by :func:`fcos_plugin.utils.checkpoint.checkpoint_diff`, the diff
  ``CheckpointFitsModelHook`` judges checkpoints by too);
* :func:`check_onnx_model` -- a valid ONNX model of standard operators only;
* :func:`onnx_input_dims` / :func:`check_input_shape` -- the input size of an exported model against its
  deploy config and ``export_meta.json``;
* :func:`prepare_exported_model` -- the set-up every step on an exported model starts with (evaluation,
  latency, quantization): the registries, both configs, and the model checked.
"""
from __future__ import annotations

import json
import os.path as osp

import torch
from mmengine.config import Config

from ..utils import abbreviate_keys
from ..utils.checkpoint import REVISE_KEYS, checkpoint_diff
from ..utils.config_check import num_classes_problem
from .common import DEPLOY_CFG_FILE, META_FILE, DeployError, init_scope
from .configs import deploy_cfg_for, load_model_cfg, static_input_shape

__all__ = ['check_checkpoint', 'check_input_shape', 'check_onnx_model', 'onnx_input_dims',
           'prepare_exported_model']

#: ONNX domains of standard operators.
STANDARD_DOMAINS = ('', 'ai.onnx')


def check_checkpoint(model: torch.nn.Module, checkpoint: str, config_name: str = '') -> dict:
    """Load ``checkpoint`` into ``model`` with mmengine's strict load; say what does not fit if it fails.

    The check is mmengine's (``strict=True``: every weight present with its shape, nothing extra; BN's
    ``num_batches_tracked`` may be absent); the message counts and names the missing, unexpected and
    differently shaped tensors.

    Returns:
        dict: the checkpoint's ``meta`` (may be empty).

    Raises:
        DeployError: no such file, unreadable file, no state dict, or weights that do not fit ``model``.
    """
    from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

    from fcos_plugin.engine import UnsafeCheckpointError, safe_checkpoint_loading
    if not osp.isfile(checkpoint):
        raise DeployError(f'checkpoint {checkpoint} does not exist')
    try:
        with safe_checkpoint_loading(checkpoint):
            ckpt = _load_checkpoint(checkpoint, map_location='cpu')
    except UnsafeCheckpointError as e:
        raise DeployError(str(e)) from None
    except Exception as e:  # noqa: BLE001  (any unreadable file: say which and why)
        raise DeployError(f'cannot read checkpoint {checkpoint}: {type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""}') from None
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DeployError(f'checkpoint {checkpoint} holds no state_dict of tensors')
    classes = ((ckpt.get('meta') or {}).get('dataset_meta') or {}).get('classes')  # what it was trained on
    problem = hasattr(model, 'bbox_head') and num_classes_problem(
        model.bbox_head.num_classes, classes, source=f'checkpoint {checkpoint}', metainfo_hint=False)
    if problem:
        raise DeployError(f'{problem} ({config_name})')
    try:
        _load_checkpoint_to_model(model, ckpt, strict=True, revise_keys=REVISE_KEYS)
    except RuntimeError:  # mmengine lists every key in one line: count and abbreviate them instead
        missing, unexpected, mismatched = checkpoint_diff(model, ckpt)
        mismatched = [f'{k} {a} vs {b}' for k, a, b in sorted(mismatched)]
        parts = [f'{what} ({len(keys)}): {abbreviate_keys(keys)}' for what, keys in (
            ('missing keys', missing), ('unexpected keys', unexpected),
            ('shape mismatches, checkpoint vs model', mismatched)) if keys]
        raise DeployError(f'checkpoint {checkpoint} does not match config {config_name}: '
                          + '; '.join(parts)) from None
    return ckpt.get('meta', {}) or {}


def check_onnx_model(path: str) -> list[str]:
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


def onnx_input_dims(path: str) -> list[int | str | None]:
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


def check_input_shape(path: str, deploy_cfg: Config) -> tuple[int, int] | None:
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


def prepare_exported_model(model_cfg: str | Config, model: str, deploy_cfg: str | Config | None = None,
                           check_ops: bool = True) -> tuple[Config, Config, tuple[int, int] | None]:
    """Set up a step on an exported model: mmdet's registries in scope (:func:`init_scope`), the model
    config loaded (:func:`load_model_cfg`), the deploy config the model goes with (:func:`deploy_cfg_for`),
    and the model checked -- it exists, with ``check_ops`` it is valid ONNX of standard operators
    (:func:`check_onnx_model`), and its input size agrees with that deploy config and ``export_meta.json``
    (:func:`check_input_shape`, seconds, so a wrong size fails before minutes of work).

    Returns:
        tuple: the model config, the deploy config, and the model's static (height, width) or None.

    Raises:
        DeployError: as the steps above say.
    """
    init_scope()
    model_cfg = load_model_cfg(model_cfg)
    deploy_cfg = deploy_cfg_for(model, deploy_cfg)
    if not osp.isfile(model):
        raise DeployError(f'model {model} does not exist')
    if check_ops:
        check_onnx_model(model)
    return model_cfg, deploy_cfg, check_input_shape(model, deploy_cfg)
