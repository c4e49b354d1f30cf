"""What the installed mmcv's compiled ops can do."""
from __future__ import annotations

import functools

__all__ = ['mmcv_has_cuda_ops']


@functools.lru_cache(maxsize=1)
def mmcv_has_cuda_ops() -> bool:
    """Whether mmcv's ``_ext`` was compiled with CUDA kernels (``tools/install.sh`` builds it on the
    machine it runs on: without CUDA on a CPU-only machine)."""
    from mmcv.utils import ext_loader
    try:
        ext = ext_loader.load_ext('_ext', ['get_compiling_cuda_version'])
        return ext.get_compiling_cuda_version() not in ('', 'not available')
    except Exception:  # noqa: BLE001  (no _ext at all: no kernels)
        return False
