"""Make one config run on whatever machine it lands on (GPUs or CPU only, one process or many)."""
from __future__ import annotations

import warnings

import torch
from mmengine.config import Config


def adapt_cfg_to_machine(cfg: Config) -> Config:
    """Adjust device-specific settings in place when no CUDA device is present.

    * distributed runs use the ``gloo`` backend and a DDP wrapper without ``device_ids``
      (:class:`fcos_plugin.compat.CPUCompatDistributedDataParallel`);
    * ``SyncBN`` is switched off (it needs CUDA);
    * ``--amp`` (``AmpOptimWrapper``) falls back to fp32 with a warning.
    """
    if torch.cuda.is_available():
        return cfg
    distributed = cfg.get('launcher', 'none') != 'none'
    if distributed:
        cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
        if cfg.get('model_wrapper_cfg') is None:
            cfg.model_wrapper_cfg = dict(type='CPUCompatDistributedDataParallel')
    if cfg.get('sync_bn'):
        warnings.warn('no CUDA device: sync_bn disabled (SyncBatchNorm needs CUDA)')
        cfg.sync_bn = None
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper':
        warnings.warn('no CUDA device: --amp ignored, training in fp32')
        cfg.optim_wrapper.type = 'OptimWrapper'
        cfg.optim_wrapper.pop('loss_scale', None)
    return cfg
