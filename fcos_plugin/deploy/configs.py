"""The two configs of a deployment, loaded and checked before anything expensive runs.

* :func:`load_model_cfg` -- the model config, with the top-level ``test_pipeline`` mmdeploy reads and a
  test config the exported graph can reproduce;
* :func:`load_deploy_cfg` -- an mmdeploy deploy config this project can export and run (a backend of
  :data:`DEPLOY_BACKENDS`, end-to-end detection), optionally made static for one input size;
* :func:`deploy_cfg_for` -- the deploy config an exported model goes with (the one exported beside it).

**Backends.** :data:`DEPLOY_BACKENDS` maps mmdeploy's ``backend_config.type`` to what this project knows
of that backend: its default deploy configs (dynamic, and static for ``--shape``), how a config is made
static for one input size, and the checks of its own settings. ONNX Runtime is the one entry; a TensorRT
or OpenVINO entry goes beside it, with its deploy configs in ``configs/deploy/`` (TensorRT: static input
sizes in ``backend_config.model_inputs``; OpenVINO: ``backend_config.mo_options``). What every backend
shares -- end-to-end mmdet detection, ``input`` -> ``dets``, ``labels`` -- is checked for all of them.
"""
from __future__ import annotations

import copy
import os.path as osp
from collections.abc import Callable
from typing import NamedTuple

from mmengine.config import Config

from ..paths import config_path
from .common import DEPLOY_CFG_FILE, DeployError
from .rewriters import check_exportable_test_cfg

__all__ = ['DEFAULT_BACKEND', 'DEFAULT_DEPLOY_CFG', 'DEPLOY_BACKENDS', 'DeployBackend', 'STATIC_DEPLOY_CFG',
           'deploy_cfg_for', 'load_deploy_cfg', 'load_model_cfg', 'static_input_shape']

DEFAULT_DEPLOY_CFG = config_path('deploy', 'detection_onnxruntime_dynamic.py')
STATIC_DEPLOY_CFG = config_path('deploy', 'detection_onnxruntime_static-512x512.py')

#: ``need(condition, what)``: unless ``condition``, the "unsupported deploy config" error saying ``what``.
Need = Callable[[bool, str], None]


class DeployBackend(NamedTuple):
    """What the deploy tools need to know of one inference backend (an entry of :data:`DEPLOY_BACKENDS`)."""

    #: the name users know it by, for messages
    title: str
    #: deploy config for dynamic shapes
    dynamic_cfg: str
    #: deploy config of one static size (made static for another size by ``make_static``)
    static_cfg: str
    #: ``make_static(cfg, height, width)``: the deploy config edited in place to take only that size
    make_static: Callable[[Config, int, int], None]
    #: ``check(cfg, need)``: the backend's own settings (what all backends share is checked apart)
    check: Callable[[Config, Need], None]


def _onnx_make_static(cfg: Config, height: int, width: int) -> None:
    """An ONNX graph of one input size: ``onnx_config.input_shape`` set, its dynamic axes removed."""
    cfg.onnx_config.input_shape = [width, height]  # mmdeploy's order is (width, height)
    cfg.onnx_config.pop('dynamic_axes', None)


def _check_onnxruntime(cfg: Config, need: Need) -> None:
    """ONNX Runtime runs the ONNX graph itself: the IR must be ONNX."""
    onnx_type = cfg.get('onnx_config', {}).get('type')
    need(onnx_type == 'onnx', f'onnx_config.type is {onnx_type!r}')


#: mmdeploy ``backend_config.type`` -> the backend's deploy configs and checks (see the module docstring).
DEPLOY_BACKENDS: dict[str, DeployBackend] = {
    'onnxruntime': DeployBackend('ONNX Runtime', DEFAULT_DEPLOY_CFG, STATIC_DEPLOY_CFG, _onnx_make_static,
                                 _check_onnxruntime),
}
#: The backend of ``load_deploy_cfg(None)``, hence of the tools without ``--deploy-cfg``.
DEFAULT_BACKEND = 'onnxruntime'


def _supported_backends() -> str:
    return ', '.join(f'{b.title} ({name!r})' for name, b in DEPLOY_BACKENDS.items())


def load_model_cfg(config: str | Config, cfg_options: dict | None = None,
                   data_root: str | None = None) -> Config:
    """The model config with a top-level ``test_pipeline`` (mmdeploy reads it from there).

    Args:
        config: path or config.
        cfg_options: overrides (``--cfg-options``).
        data_root: the ``data_root`` of the train, val and test datasets (e.g. a benchmark's
            ``--data-root``), applied before ``cfg_options``.

    Raises:
        DeployError: no such file, no test pipeline, or a test config the export cannot reproduce.
    """
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        if not osp.isfile(config):
            raise DeployError(f'config {config} does not exist')
        cfg = Config.fromfile(config)
    if data_root is not None:
        root = osp.abspath(data_root)
        cfg.merge_from_dict({f'{split}_dataloader.dataset.data_root': root
                             for split in ('train', 'val', 'test')})
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


def load_deploy_cfg(deploy_cfg: str | Config | None = None,
                    shape: tuple[int, int] | None = None) -> Config:
    """Load and check an mmdeploy deploy config (a backend of :data:`DEPLOY_BACKENDS`, end-to-end
    detection only).

    Args:
        deploy_cfg: path or config; None for :data:`DEFAULT_BACKEND`'s dynamic deploy config
            (:data:`DEFAULT_DEPLOY_CFG`), or its static one (:data:`STATIC_DEPLOY_CFG`) when ``shape`` is
            given.
        shape: (height, width) for a static model; overrides the input shape and removes the dynamic
            axes (the backend's ``make_static``).

    Raises:
        DeployError: unknown file, or a config this project cannot export or run (an unknown backend:
            the message lists the supported ones).
    """
    if deploy_cfg is None:
        default = DEPLOY_BACKENDS[DEFAULT_BACKEND]
        deploy_cfg = default.static_cfg if shape is not None else default.dynamic_cfg
    if isinstance(deploy_cfg, Config):
        cfg, name = copy.deepcopy(deploy_cfg), deploy_cfg.filename or '<deploy config>'
    else:
        if not osp.isfile(deploy_cfg):
            raise DeployError(f'deploy config {deploy_cfg} does not exist (see configs/deploy/)')
        cfg, name = Config.fromfile(deploy_cfg), deploy_cfg

    def need(cond: bool, what: str) -> None:
        if not cond:
            raise DeployError(f'unsupported deploy config {name}: {what}. Supported: backends '
                              f'{_supported_backends()}; mmdet ObjectDetection end2end, outputs '
                              '[dets, labels] (see configs/deploy/)')

    backend = cfg.get('backend_config', {}).get('type')
    need(backend in DEPLOY_BACKENDS, f'backend_config.type is {backend!r}')
    DEPLOY_BACKENDS[backend].check(cfg, need)
    onnx_cfg = cfg.get('onnx_config', {})
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
        DEPLOY_BACKENDS[backend].make_static(cfg, h, w)
    if not onnx_cfg.get('dynamic_axes') and not cfg.onnx_config.get('input_shape'):
        raise DeployError(f'deploy config {name} is static but has no onnx_config.input_shape; '
                          'pass --shape H W')
    return cfg


def static_input_shape(deploy_cfg: Config) -> list[int] | None:
    """(width, height) of a static deploy config, None for dynamic shapes."""
    from mmdeploy.utils import get_input_shape, is_dynamic_shape
    return None if is_dynamic_shape(deploy_cfg) else get_input_shape(deploy_cfg)


def deploy_cfg_for(model_path: str, deploy_cfg: str | Config | None) -> Config:
    """The deploy config given, else the one exported next to the model, else the default."""
    if deploy_cfg is None:
        beside = osp.join(osp.dirname(osp.abspath(model_path)), DEPLOY_CFG_FILE)
        if osp.isfile(beside):
            deploy_cfg = beside
    return load_deploy_cfg(deploy_cfg)
