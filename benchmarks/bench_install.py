#!/usr/bin/env python
"""How long a first install takes: ``tools/install.sh`` into a scratch environment with empty caches.

    python benchmarks/bench_install.py [--keep] [--write]

Runs ``bash tools/install.sh`` with ``FCOS_PLUGIN_VENV``, ``FCOS_PLUGIN_CACHE`` (the mmcv wheel store) and
``PIP_CACHE_DIR`` pointing into a new temporary directory, so that it downloads every package and builds
mmcv from source as on a fresh machine (the project's environment and wheel store are not touched), then
runs it a second time as a rerun does. Reads the durations install.sh prints (``mmcv built in``,
``install took``) and measures each run's wall time. Prints the table and the machine (CPU, load before
and after); ``--write`` puts them into benchmarks/RESULTS.md, "First install" (commentary below the
generated part kept). ``--keep`` keeps the scratch directory. About 20 minutes on 2 cores, most of it
compiling mmcv; needs the package registries.
"""
from __future__ import annotations

import argparse
import datetime
import os
import os.path as osp
import re
import shutil
import subprocess
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTION = '## First install'
END_MARK = '<!-- end of bench_install.py output; commentary below is kept by --write -->'
DURATION = r'\[install\] {} (\d+) min (\d+) s'


def minutes(pattern: str, log: str) -> float | None:
    """Minutes of the ``[install] <pattern> M min S s`` line of ``log``; None when it has none."""
    m = re.search(DURATION.format(pattern), log)
    return int(m.group(1)) + int(m.group(2)) / 60 if m else None


def install(env: dict) -> tuple[float, str]:
    """One ``bash tools/install.sh`` run: (wall s, its output)."""
    t0 = time.perf_counter()
    proc = subprocess.run(['bash', osp.join(REPO, 'tools', 'install.sh')], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    print(proc.stdout, flush=True)
    if proc.returncode:
        raise SystemExit(f'tools/install.sh failed ({proc.returncode})')
    return wall, proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--keep', action='store_true', help='keep the scratch environment and caches')
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    scratch = tempfile.mkdtemp(prefix='fcos_install_')
    env = dict(os.environ, FCOS_PLUGIN_VENV=osp.join(scratch, 'venv'),
               FCOS_PLUGIN_CACHE=osp.join(scratch, 'cache'), PIP_CACHE_DIR=osp.join(scratch, 'pip'))
    env.pop('VIRTUAL_ENV', None)
    try:
        first_wall, first = install(env)
        again_wall, again = install(env)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    build, total = minutes('mmcv built in', first), minutes('install took', first)
    if build is None or total is None or 'nothing to do' not in again:
        raise SystemExit('install.sh did not build mmcv on the first run or did not find it complete on the '
                         'second: the scratch directories were not empty?')
    rows = ['| run | wall | of it: mmcv build |', '|---|---|---|',
            f'| first (empty caches: download everything, build mmcv) | {first_wall / 60:.1f} min '
            f'| {build:.1f} min |',
            f'| second (environment complete) | {again_wall:.1f} s | - |']
    text = '\n'.join([
        SECTION, '',
        f'`python benchmarks/bench_install.py --write` ({datetime.date.today()}): `bash tools/install.sh` '
        'into a scratch environment with empty mmcv wheel store and pip cache (`FCOS_PLUGIN_VENV`, '
        '`FCOS_PLUGIN_CACHE`, `PIP_CACHE_DIR`), packages from the registries, then again; install.sh\'s own '
        f'durations: mmcv built in {build:.1f} min, install took {total:.1f} min.', '',
        markdown_line(before), '', *rows, ''])
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
