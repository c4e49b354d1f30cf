"""Write ``tests/slow_tests.txt``, the tests ``pytest -m "not slow"`` leaves out, from a timed run.

    .venv/bin/python -m pytest tests -q -p no:cacheprovider --junitxml=/tmp/junit.xml
    .venv/bin/python tests/slow_tests.py /tmp/junit.xml [--seconds 3]

A test is slow when its setup + call + teardown took more than ``--seconds`` in that run (parametrized
cases count together under the test's name), or when it uses a fixture of ``SLOW_FIXTURES`` (marked in
``conftest.py`` without the list). ``conftest.py`` marks every test named in the file ``slow``.
"""
from __future__ import annotations

import argparse
import collections
import os.path as osp
import xml.etree.ElementTree as ET

HERE = osp.dirname(osp.abspath(__file__))
OUT = osp.join(HERE, 'slow_tests.txt')


def durations(junit: str) -> dict[str, float]:
    """Seconds per test (``path::name``, parameters summed) from pytest's JUnit XML."""
    seconds: dict[str, float] = collections.defaultdict(float)
    for case in ET.parse(junit).getroot().iter('testcase'):
        path = case.get('classname', '').replace('.', '/')
        parts = path.split('/')
        # classname is dotted module[.Class]; keep the module path, add the class if there is one
        module = '/'.join(p for p in parts if not p[:1].isupper()) + '.py'
        cls = [p for p in parts if p[:1].isupper()]
        name = case.get('name', '').split('[', 1)[0]
        seconds['::'.join([module, *cls, name])] += float(case.get('time', 0))
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('junit')
    parser.add_argument('--seconds', type=float, default=3.0)
    args = parser.parse_args()
    times = durations(args.junit)
    slow = sorted(t for t, s in times.items() if s > args.seconds)
    with open(OUT, 'w') as f:
        f.write(f'# written by tests/slow_tests.py from a full run: tests over {args.seconds:g} s\n')
        f.write(''.join(f'{t}\n' for t in slow))
    fast = sum(s for t, s in times.items() if s <= args.seconds)
    print(f'{len(slow)} slow tests ({sum(times[t] for t in slow) / 60:.1f} min) written to {OUT}; '
          f'the rest: {len(times) - len(slow)} tests, {fast / 60:.1f} min')


if __name__ == '__main__':
    main()
