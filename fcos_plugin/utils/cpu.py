"""What the CPU can do for int8: the ``/proc/cpuinfo`` flags that decide ONNX Runtime's int8 kernels."""
from __future__ import annotations

import functools

__all__ = ['INT8_DOT_FLAGS', 'cpu_flags', 'cpu_model', 'has_int8_dot_product']

#: Flags of the instructions that multiply-add u8 x s8 into int32 without saturation (VNNI, AMX).
INT8_DOT_FLAGS = ('avx512_vnni', 'avx_vnni', 'amx_int8')


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough: all cores are alike here
                key, _, value = line.partition(':')
                info[key.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> frozenset[str]:
    """The first processor's ``flags`` (empty where ``/proc/cpuinfo`` is not readable)."""
    return frozenset(_cpuinfo().get('flags', '').split())


def cpu_model() -> str:
    """The first processor's ``model name`` (``'unknown'`` where not readable)."""
    return _cpuinfo().get('model name', 'unknown')


def has_int8_dot_product() -> bool:
    """True when the CPU has VNNI or AMX int8: int8 kernels need no ``reduce_range`` there.

    Without them, x86 int8 GEMMs use ``vpmaddubsw``, whose int16 intermediate sums saturate for 8-bit
    weights: ONNX Runtime's advice is 7-bit weights (``reduce_range=True``) on such CPUs."""
    return any(flag in cpu_flags() for flag in INT8_DOT_FLAGS)
