"""mmengine's ``Runner`` and DDP wrapper for this stack (torch 2.14, machines with or without GPUs).

Selected by configs, not applied on import: the shared runtime config sets
``runner_type = 'CompatRunner'`` (``tools/train.py`` and ``tools/test.py`` choose it for configs that set
no runner), and ``fcos_plugin.utils.adapt_cfg_to_machine`` selects
:class:`CPUCompatDistributedDataParallel` for distributed runs without CUDA.
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import MODEL_WRAPPERS, RUNNERS
from mmengine.runner import Runner

from .checkpoint_loading import safe_checkpoint_loading

__all__ = ['CPUCompatDistributedDataParallel', 'CompatRunner', 'init_cfg_checkpoints']


def init_cfg_checkpoints(model: torch.nn.Module) -> list[str]:
    """The checkpoint files the ``init_cfg`` of ``model``'s modules name (``Pretrained`` inits)."""
    found = []
    for module in model.modules():
        init_cfg = getattr(module, 'init_cfg', None)
        for cfg in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
            if isinstance(cfg, dict) and isinstance(cfg.get('checkpoint'), str):
                found.append(cfg['checkpoint'])
    return list(dict.fromkeys(found))


@RUNNERS.register_module()
class CompatRunner(Runner):
    """mmengine's ``Runner`` with two differences, both where they bite:

    * checkpoints (``load_from``, ``resume``, ``init_cfg``'s ``Pretrained``) load under
      :func:`~fcos_plugin.engine.checkpoint_loading.safe_checkpoint_loading`: weights-only, mmengine's
      own checkpoints included, and a refused or corrupt file is named in one line;
    * a distributed run without CUDA starts (mmengine 0.10.7 calls ``torch.cuda.set_device`` while
      initialising ``torch.distributed`` with the ``pytorch`` launcher): the process group is
      initialised with ``gloo`` here first, as mmengine would, minus the device selection.
    """

    def setup_env(self, env_cfg: dict) -> None:
        if (self.distributed and self.launcher == 'pytorch' and not is_distributed()
                and not torch.cuda.is_available()):
            dist_cfg = dict(env_cfg.get('dist_cfg', {}))
            backend = dist_cfg.pop('backend', 'gloo')
            dist_cfg.pop('init_backend', None)
            torch_dist.init_process_group(backend='gloo' if backend == 'nccl' else backend, **dist_cfg)
        super().setup_env(env_cfg)

    def _init_model_weights(self) -> None:
        model = self.model.module if is_model_wrapper(self.model) else self.model
        with safe_checkpoint_loading(*init_cfg_checkpoints(model)):
            super()._init_model_weights()

    def load_checkpoint(self, filename: str, *args, **kwargs):
        with safe_checkpoint_loading(filename):
            return super().load_checkpoint(filename, *args, **kwargs)


@MODEL_WRAPPERS.register_module()
class CPUCompatDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's ``MMDistributedDataParallel`` that also wraps CPU modules (gloo).

    mmengine's Runner passes ``device_ids=[local_rank]``; torch requires ``device_ids=None`` for modules
    on CPU. On GPUs this is exactly ``MMDistributedDataParallel``.
    """

    def __init__(self, module, detect_anomalous_params: bool = False, **kwargs):
        if next(module.parameters()).device.type == 'cpu':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module, detect_anomalous_params=detect_anomalous_params, **kwargs)
