"""Make one config run on whatever machine it lands on (GPUs or CPU only, one process or many).

Not an mmengine extension: ``tools/train.py`` and ``tools/test.py`` call :func:`adapt_cfg_to_machine` on
the config before ``Runner.from_cfg`` (as mmdet's ``utils/setup_env.py`` prepares the environment)."""
from __future__ import annotations

import warnings

import torch
from mmengine.config import Config

__all__ = ['adapt_cfg_to_machine']


def adapt_cfg_to_machine(cfg: Config) -> Config:
    """Adjust device-specific settings in place when no CUDA device is present (on GPUs the config
    is left exactly as written, so mmengine's own DDP wrapper and settings apply).

    * distributed runs use the ``gloo`` backend and a DDP wrapper without ``device_ids``
      (:class:`fcos_plugin.engine.CPUCompatDistributedDataParallel`);
    * ``SyncBN`` is switched off (it needs CUDA);
    * ``--amp`` (``AmpOptimWrapper``) falls back to fp32 with a warning.
    """
    if torch.cuda.is_available():
        return cfg
    distributed = cfg.get('launcher', 'none') != 'none'
    if distributed:
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        if cfg.get('model_wrapper_cfg') is None:
            # what mmengine's default wrapper gets, minus the device_ids CPU modules cannot take
            cfg.model_wrapper_cfg = dict(
                type='CPUCompatDistributedDataParallel', broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
    if cfg.get('sync_bn'):
        warnings.warn('no CUDA device: sync_bn disabled (SyncBatchNorm needs CUDA)')
        cfg.sync_bn = None
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper':
        warnings.warn('no CUDA device: --amp ignored, training in fp32')
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
    return cfg
