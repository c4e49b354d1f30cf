"""benchmarks/machine.py reports the CPU, cores, load and versions a benchmark ran with.

The parser is checked against /proc/cpuinfo read another way (regular expressions over the whole file,
and grep where it exists), and on synthetic files for the cases this machine does not show."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import REPO


def _machine():
    spec = importlib.util.spec_from_file_location('bench_machine', os.path.join(REPO, 'benchmarks',
                                                                                'machine.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


machine = _machine()
CPUINFO = '/proc/cpuinfo'
needs_cpuinfo = pytest.mark.skipif(not os.path.isfile(CPUINFO), reason='no /proc/cpuinfo')


@needs_cpuinfo
def test_cpu_model_and_flags_agree_with_cpuinfo_read_another_way():
    with open(CPUINFO) as f:
        text = f.read()
    model = re.search(r'^model name\s*:\s*(.*?)\s*$', text, re.M)
    flags = set(re.search(r'^flags\s*:\s*(.*?)\s*$', text, re.M).group(1).split())
    facts = machine.machine_facts()
    assert facts['cpu_model'] == (model.group(1) if model else 'unknown')
    assert facts['cpu_flags'] == [f for f in machine.SPEED_FLAGS if f in flags]
    assert set(facts['cpu_flags']) | set(facts['missing_flags']) == set(machine.SPEED_FLAGS)
    if shutil.which('grep'):  # the command the docs tell readers to run
        pattern = r'avx512_vnni\|avx512_bf16\|avx512f\|avx2\|avx_vnni'
        out = subprocess.run(['grep', '-o', '-w', pattern, CPUINFO], capture_output=True, text=True)
        out = out.stdout.split()
        assert set(out) == {f for f in facts['cpu_flags'] if not f.startswith('amx')}


def test_cores_and_load_are_the_os_s():
    facts = machine.machine_facts()
    assert facts['cpu_count'] == os.cpu_count()
    assert facts['usable_cpus'] == len(os.sched_getaffinity(0))
    assert len(facts['load_avg']) == 3 and all(x >= 0 for x in facts['load_avg'])


def test_versions_are_the_installed_ones_or_none():
    from importlib.metadata import PackageNotFoundError, version
    facts = machine.machine_facts()
    for key in ('torch', 'onnxruntime'):
        try:
            want = version(key)
        except PackageNotFoundError:
            want = None
        assert facts[key] == want


def test_first_processor_only_and_missing_file(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n'
                    'model name\t: Intel(R) Xeon(R) Platinum 8480+\n'
                    'flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n\n'
                    'processor\t: 1\nmodel name\t: something else\nflags\t\t: fpu sse2\n\n')
    assert machine.cpu_info(str(info)) == ('Intel(R) Xeon(R) Platinum 8480+',
                                           {'fpu', 'avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16',
                                            'amx_tile', 'amx_int8', 'amx_bf16'})
    facts = machine.machine_facts(str(info))
    assert facts['cpu_id'] == 'family 6 model 143'
    assert facts['missing_flags'] == ['avx_vnni']
    assert machine.cpu_info(str(tmp_path / 'absent')) == ('unknown', set())
    assert machine.machine_facts(str(tmp_path / 'absent'))['cpu_flags'] == []


def test_markdown_line_says_everything_and_both_loads(tmp_path):
    info = tmp_path / 'cpuinfo'
    info.write_text('model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 17\nflags\t\t: avx2 avx512f '
                    'avx512_vnni avx512_bf16\n')
    before = machine.machine_facts(str(info))
    before.update(load_avg=(0.25, 0.5, 0.5), cpu_count=2, usable_cpus=2, torch='2.14.1', onnxruntime=None)
    after = dict(before, load_avg=(1.75, 0.5, 0.5))
    line = machine.markdown_line(before, after)
    assert line == ('Machine: AMD EPYC, family 25 model 17 (avx2, avx512f, avx512_vnni, avx512_bf16; '
                    'without avx_vnni, amx_tile, amx_int8, amx_bf16); 2 CPUs, 2 usable; load average (1 min) '
                    f'0.25 before, 1.75 after; Python {before["python"]}, torch 2.14.1, ONNX Runtime not '
                    'installed.')
    assert '\n' not in machine.markdown_line(machine.machine_facts())  # after defaults to now
