"""bench_demo_peers.py --write produces a table that renders and keeps the commentary under it."""
from __future__ import annotations

import importlib.util
import os
import sys

from tests.conftest import REPO
from tests.test_docs_tables import table_problems

BENCH = os.path.join(REPO, 'benchmarks')


def _load(name: str):
    sys.path.insert(0, BENCH)  # the scripts import their neighbours as a script run would
    try:
        spec = importlib.util.spec_from_file_location(f'bench_{name}', os.path.join(BENCH, f'{name}.py'))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(BENCH)


def test_peer_table_has_every_model_and_budget_and_renders():
    peers = _load('bench_demo_peers')
    curves = {'a': [(0, 0, 0, 0), (150, 2.4, 0.229, 0.4), (300, 4.8, 0.44, 0.6)],
              'b': [(0, 0, 0, 0), (150, 2.7, 0.126, 0.3)]}  # a run that stopped early
    lines = peers.table(curves)
    assert lines[0] == '| model | 150 it | 300 it | s/iteration |'
    assert lines[2] == '| a | 0.229 (2.4 min) | 0.440 (4.8 min) | 0.96 |'
    assert lines[3] == '| b | 0.126 (2.7 min) | - | 1.08 |'
    assert table_problems('\n'.join(lines) + '\n') == []


def test_write_section_replaces_the_generated_part_and_keeps_commentary():
    md = _load('results_md')
    mark = '<!-- end of x.py output; commentary below is kept by --write -->'
    old = ('# Benchmark results\n\n## A\n\nold table\n\n' + mark + '\n\nhand-written\n\n## B\n\nother\n')
    new = md.merge_section(old, '## A', '## A\n\n| t |\n|---|\n| 1 |\n', mark)
    assert new == ('# Benchmark results\n\n## A\n\n| t |\n|---|\n| 1 |\n\n' + mark + '\n\nhand-written\n\n'
                   '## B\n\nother\n')
    assert md.merge_section('# R\n', '## C', '## C\n\nx', mark) == '# R\n\n## C\n\nx\n\n' + mark + '\n'
    peers_section = "## Same budget as mmdet's own detectors (demo data)"
    with open(os.path.join(BENCH, 'RESULTS.md')) as f:
        results = f.read()
    peers = _load('bench_demo_peers')
    assert peers.SECTION == peers_section and peers.SECTION + '\n' in results
    assert peers.END_MARK in results  # --write keeps the commentary of RESULTS' peer section
