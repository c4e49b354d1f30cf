"""The facts of the machine a benchmark ran on, for its RESULTS section.

A latency or a ratio means little without the CPU it came from: int8 convolutions depend on VNNI/AMX,
bf16 on AVX-512 BF16, and a 2-core machine shared with other jobs gives slower, noisier numbers. Every
benchmark records these facts once before it measures and prints them with its table::

    from machine import machine_facts, markdown_line   # benchmarks/ is the script's directory
    before = machine_facts()
    ...                                                  # measure
    print(markdown_line(before))                         # reads the load average again, as "after"

Stable API (``bench_onnx.py`` and the other benchmarks rely on it):

* ``machine_facts() -> dict`` with the keys ``cpu_model`` (str), ``cpu_id`` (``'family F model M'``
  or ``None``), ``cpu_flags`` (the flags of
  ``SPEED_FLAGS`` the CPU has, in that order), ``missing_flags`` (the others), ``cpu_count``
  (``os.cpu_count()``), ``usable_cpus`` (``len(os.sched_getaffinity(0))``), ``load_avg`` (1/5/15-minute
  load average, a 3-tuple), ``python``, ``torch`` and ``onnxruntime`` (version strings, or ``None`` when
  the package is not installed) and ``time`` (local ISO time, seconds);
* ``markdown_line(before, after=None) -> str``: one Markdown line with those facts and the 1-minute load
  average before and after (``after`` defaults to ``machine_facts()`` now);
* ``cpu_info(path='/proc/cpuinfo') -> (model, set_of_flags)`` and ``cpu_block(path) -> dict``, the parser.

Only the standard library is imported at module level; torch and onnxruntime are looked up by their
installed metadata, not imported (importing torch takes seconds and changes nothing measured).
"""
from __future__ import annotations

import os
import platform
import time

#: CPU flags that change what a benchmark here measures, in the order they are reported.
SPEED_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_tile', 'amx_int8',
               'amx_bf16')


def cpu_block(path: str = '/proc/cpuinfo') -> dict[str, str]:
    """The ``key: value`` fields of the first processor in ``path`` (Linux ``/proc/cpuinfo`` layout);
    empty when the file is missing."""
    fields: dict[str, str] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return fields
    for line in lines:
        key, sep, value = line.partition(':')
        if not sep:
            if fields:
                break  # the blank line that ends the first processor's block
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_info(path: str = '/proc/cpuinfo') -> tuple[str, set[str]]:
    """``(model name, flags)`` of the first processor; ``('unknown', set())`` where the file has none."""
    fields = cpu_block(path)
    return fields.get('model name') or 'unknown', set(fields.get('flags', '').split())


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_facts(cpuinfo: str = '/proc/cpuinfo') -> dict:
    """The machine's facts now (see the module docstring for the keys)."""
    model, flags = cpu_info(cpuinfo)
    fields = cpu_block(cpuinfo)
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    try:
        load = tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        load = None
    return dict(cpu_model=model,
                cpu_id=(f'family {fields["cpu family"]} model {fields["model"]}'
                        if 'cpu family' in fields and 'model' in fields else None),
                cpu_flags=[f for f in SPEED_FLAGS if f in flags],
                missing_flags=[f for f in SPEED_FLAGS if f not in flags],
                cpu_count=os.cpu_count(), usable_cpus=usable, load_avg=load,
                python=platform.python_version(), torch=_version('torch'),
                onnxruntime=_version('onnxruntime'), time=time.strftime('%Y-%m-%dT%H:%M:%S'))


def _load(facts: dict) -> str:
    return 'unknown' if facts.get('load_avg') is None else f'{facts["load_avg"][0]:.2f}'


def markdown_line(before: dict, after: dict | None = None) -> str:
    """One line for RESULTS: CPU, its speed-relevant flags, cores, load average before/after, versions."""
    after = machine_facts() if after is None else after
    flags = ', '.join(before['cpu_flags']) or 'none of ' + ', '.join(SPEED_FLAGS)
    missing = f'; without {", ".join(before["missing_flags"])}' if before['cpu_flags'] and \
        before['missing_flags'] else ''
    versions = ', '.join(f'{name} {before[key] or "not installed"}'
                         for name, key in (('torch', 'torch'), ('ONNX Runtime', 'onnxruntime')))
    cpu = before['cpu_model'] + (f', {before["cpu_id"]}' if before.get('cpu_id') else '')
    return (f'Machine: {cpu} ({flags}{missing}); {before["cpu_count"]} CPUs, '
            f'{before["usable_cpus"]} usable; load average (1 min) {_load(before)} before, {_load(after)} '
            f'after; Python {before["python"]}, {versions}.')


if __name__ == '__main__':
    import json
    facts = machine_facts()
    print(json.dumps(facts, indent=1))
    print(markdown_line(facts, facts))
