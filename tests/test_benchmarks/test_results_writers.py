"""The benchmarks' --write: bench_demo_peers.py's table renders and keeps the commentary under it, and every
table of benchmarks/RESULTS.md is in the generated part of a section its script's --write updates."""
from __future__ import annotations

import importlib.util
import os
import re
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


GENERATED = re.compile(r'<!-- (?:end of ([\w.]+)\.py output; commentary below is kept by --write|'
                       r'written by benchmarks/([\w.]+)\.py) -->')


def results_sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` of every ``## `` section of RESULTS.md, in order."""
    parts = re.split(r'^(## .*)$', text, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def generated_table_problems(text: str) -> list[str]:
    """Every table of RESULTS.md must be in the generated part of its section: above the mark of the
    script that writes it, whose ``SECTION`` (or one of its ``SECTIONS``) is that heading and whose
    ``END_MARK`` is that mark. The commentary below the mark holds no table."""
    problems = []
    for heading, body in results_sections(text):
        marks = list(GENERATED.finditer(body))
        has_table = re.search(r'^\|[-:| ]+\|$', body, flags=re.M)
        if not marks:
            if has_table:
                problems.append(f'{heading}: a table no script writes (no generated-part mark)')
            continue
        if len(marks) > 1:
            problems.append(f'{heading}: {len(marks)} generated-part marks')
            continue
        commentary = body[marks[0].end():]
        if re.search(r'^\|[-:| ]+\|$', commentary, flags=re.M):
            problems.append(f'{heading}: a table in the hand-written commentary below the mark')
        script = marks[0].group(1) or marks[0].group(2)
        if not os.path.isfile(os.path.join(BENCH, f'{script}.py')):
            problems.append(f'{heading}: its mark names benchmarks/{script}.py, which does not exist')
            continue
        module = _load(script)
        sections = getattr(module, 'SECTIONS', (getattr(module, 'SECTION', None),))
        if heading not in sections or getattr(module, 'END_MARK', None) != marks[0].group(0):
            problems.append(f'{heading}: benchmarks/{script}.py --write would not update this section '
                            f'(it writes {sections})')
    return problems


def test_every_results_table_is_written_by_its_script():
    with open(os.path.join(BENCH, 'RESULTS.md')) as f:
        problems = generated_table_problems(f.read())
    assert problems == [], '\n'.join(problems)


def test_generated_table_check_catches_hand_written_tables():
    mark = '<!-- end of bench_soak.py output; commentary below is kept by --write -->'
    soak = _load('bench_soak')
    table = '| a |\n|---|\n| 1 |\n'
    good = f'# R\n\n{soak.SECTION}\n\n{table}\n{mark}\n\nwords\n'
    assert generated_table_problems(good) == []
    assert generated_table_problems(f'# R\n\n## Hand made\n\n{table}') != []  # no script
    assert generated_table_problems(good.replace('words', table)) != []  # table in the commentary
    assert generated_table_problems(good.replace(soak.SECTION, '## Soak, renamed')) != []  # --write misses it
    assert generated_table_problems(good.replace('bench_soak', 'bench_gone')) != []
