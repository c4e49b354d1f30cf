"""Write a benchmark's generated part into its section of ``benchmarks/RESULTS.md``.

A section is ``## TITLE`` up to the next ``## ``. Its generated part (heading, command, machine line,
table) ends with ``end_mark``, an HTML comment naming the script; the hand-written commentary after the
mark is kept on every ``--write``. A section without the mark is replaced whole; a missing section is
appended. The file is replaced atomically (``fcos_plugin.utils.write_atomic``).
"""
from __future__ import annotations

import os.path as osp

RESULTS = osp.join(osp.dirname(osp.abspath(__file__)), 'RESULTS.md')


def merge_section(old: str, section: str, text: str, end_mark: str) -> str:
    """``old`` with the generated part of ``section`` replaced by ``text`` (which starts with ``section``)."""
    text = text.rstrip('\n') + '\n\n' + end_mark + '\n'
    start = old.find(section + '\n')
    if start < 0:
        return old.rstrip('\n') + '\n\n' + text
    next_section = old.find('\n## ', start + len(section))
    mark = old.find(end_mark, start)
    if mark >= 0 and (next_section < 0 or mark < next_section):
        rest = old[mark + len(end_mark):].lstrip('\n')
    else:
        rest = old[next_section + 1:] if next_section >= 0 else ''
    return (old[:start] + text + ('\n' + rest if rest else '')).rstrip('\n') + '\n'


def write_section(section: str, text: str, end_mark: str, path: str = RESULTS) -> str:
    """Merge ``text`` into ``path`` (see :func:`merge_section`); returns ``path``."""
    from fcos_plugin.utils import write_atomic
    old = open(path).read() if osp.isfile(path) else '# Benchmark results\n'
    new = merge_section(old, section, text, end_mark)

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(new)
    write_atomic(path, write)
    return path


def publish(section: str, text: str, end_mark: str, write: bool) -> None:
    """Print a benchmark's generated part; with ``write`` (its ``--write``) also merge it into RESULTS.md."""
    print(text)
    if write:
        print(f'written to {write_section(section, text, end_mark)}')
