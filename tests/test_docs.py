"""The commands in the documentation still match the repository.

Every command of README.md, README_zh-CN.md and docs/**/*.md that runs a repository script must name a
script that exists, use only flags that script defines (``add_argument`` for Python tools; for shell
scripts, the script's text or the Python tool it forwards to) and name only configs that exist; the
English and Chinese version of each page must show the same commands; a fenced block whose commands
need COCO or slurm must say so with a ``<!-- needs: ... -->`` line. Pure text processing: no
subprocess, no heavy imports, well under a second.
"""
from __future__ import annotations

import ast
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
READMES = ('README.md', 'README_zh-CN.md')
NEEDS_VALUES = {'coco', 'gpu', 'slurm'}

FENCE = re.compile(r'^\s*```+\s*([\w+-]*)')
NEEDS = re.compile(r'^\s*<!--\s*needs:\s*([^>]*?)\s*-->\s*$')
#: README.md shows commands as 4-space indented lines starting like these
INDENTED_COMMAND = re.compile(r'^ {4}(python |bash |\.venv/bin/python |tools/|torchrun )')
SCRIPT = re.compile(r'(?:\./)?(?:tools|benchmarks)/[\w./-]+\.(?:py|sh)')
CONFIG = re.compile(r'(?<![\w./-])configs/[\w./-]+\.py')
FLAG = re.compile(r'^[\[(]*(--[A-Za-z0-9][\w-]*)')
ENV_ASSIGNMENT = re.compile(r'^[A-Za-z_]\w*=')
LAUNCHERS = {'python', 'python3', 'bash', 'sh', 'torchrun'}
#: tools that read the data set of the config they are given
DATA_TOOLS = ('tools/train.py', 'tools/test.py', 'tools/dist_train.sh', 'tools/dist_test.sh',
              'tools/slurm_train.sh', 'tools/analysis_tools/browse_dataset.py',
              'tools/deploy/test_onnx.py', 'tools/deploy/quantize_onnx.py')
#: configs that read data/mscoco (the rest read the built-in demo data)
COCO_CONFIG = re.compile(r'(?<![\w./-])configs/(?!.*demo)[\w.-]+\.py')


# ----------------------------------------------------------------------------------------------------
# collecting commands
# ----------------------------------------------------------------------------------------------------
def normalize(command: str) -> str:
    """One command as compared between languages: trailing comment dropped, whitespace collapsed."""
    command = re.sub(r'(^|\s)#.*$', '', command)
    return ' '.join(command.split())


def _join_continuations(lines: list[str]) -> list[str]:
    commands, current = [], ''
    for line in lines:
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith('#')):
            continue
        if stripped.endswith('\\'):
            current += stripped[:-1].rstrip() + ' '
            continue
        commands.append(current + stripped)
        current = ''
    if current.strip():
        commands.append(current)
    return commands


def collect_blocks(text: str, indented: bool = False) -> list[tuple[set[str], list[str]]]:
    """``(needs, commands)`` of every ```shell block (and, with ``indented``, of every run of 4-space
    indented command lines outside fenced blocks). ``needs`` is what the ``<!-- needs: ... -->`` line
    right before a fenced block declares."""
    blocks: list[tuple[set[str], list[str]]] = []
    lines = text.splitlines()
    fence_lang = None  # language of the fenced block we are in, None outside
    body: list[str] = []
    needs: set[str] = set()
    indented_run: list[str] = []
    previous = ''
    for line in lines:
        m = FENCE.match(line)
        if fence_lang is None and m:
            if indented_run:
                blocks.append((set(), _join_continuations(indented_run)))
                indented_run = []
            fence_lang = m.group(1).lower()
            n = NEEDS.match(previous)
            needs = {v.strip() for v in n.group(1).split(',') if v.strip()} if n else set()
            body = []
        elif fence_lang is not None and m and not m.group(1):
            if fence_lang in ('shell', 'bash', 'sh', 'console'):
                blocks.append((needs, _join_continuations(body)))
            fence_lang = None
        elif fence_lang is not None:
            body.append(line)
        elif indented and INDENTED_COMMAND.match(line):
            indented_run.append(line)
        elif indented_run and line.strip():
            blocks.append((set(), _join_continuations(indented_run)))
            indented_run = []
        if line.strip():
            previous = line
    assert fence_lang is None, 'unclosed ``` block'
    if indented_run:
        blocks.append((set(), _join_continuations(indented_run)))
    return blocks


def doc_files() -> list[str]:
    files = [name for name in READMES if (REPO / name).is_file()]
    files += sorted(str(p.relative_to(REPO)) for p in (REPO / 'docs').rglob('*.md'))
    return files


def blocks_of(path: Path) -> list[tuple[set[str], list[str]]]:
    return collect_blocks(path.read_text(encoding='utf-8'), indented=path.name in READMES)


def commands_of(path: Path) -> list[str]:
    return [normalize(c) for _, cmds in blocks_of(path) for c in cmds if normalize(c)]


# ----------------------------------------------------------------------------------------------------
# what a command runs
# ----------------------------------------------------------------------------------------------------
OPERATORS = {'&&', '||', ';', '|', '&'}
ALTERNATIVE = '\ue000'  # stands for a synopsis's 'A|B' while the command is split


def _segments(command: str) -> list[list[str]]:
    """The command's words, split into simple commands at ``&&``, ``||``, ``;``, ``|`` and ``&``
    outside quotes. A ``|`` between two words (``IMAGE|DIR`` in a synopsis) is part of the word."""
    command = re.sub(r'(?<=[^\s|])\|(?=[^\s|])', ALTERNATIVE, command)
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to whitespace
        tokens = command.split()
    segments: list[list[str]] = [[]]
    for token in tokens:
        if token in OPERATORS:
            segments.append([])
        else:
            segments[-1].append(token.replace(ALTERNATIVE, '|'))
    return [s for s in segments if s]


def script_calls(command: str) -> list[tuple[str, list[str]]]:
    """``(script, arguments)`` for each repository script the command runs (leading ``VAR=value``
    assignments are skipped)."""
    calls = []
    for tokens in _segments(command):
        while tokens and ENV_ASSIGNMENT.match(tokens[0]):
            tokens = tokens[1:]
        if not tokens:
            continue
        first = tokens[0]
        if SCRIPT.fullmatch(first):
            start = 0
        elif first in LAUNCHERS or first.endswith('/python') or re.fullmatch(r'python3?\.\d+', first):
            start = next((i for i, t in enumerate(tokens) if SCRIPT.fullmatch(t)), None)
            if start is None:
                continue
        else:
            continue
        calls.append((tokens[start].removeprefix('./'), tokens[start + 1:]))
    return calls


def flags_used(arguments: list[str]) -> list[str]:
    flags = []
    for token in arguments:
        m = FLAG.match(token)
        if m:
            flags.append(m.group(1).split('=')[0])
    return flags


@lru_cache(maxsize=None)
def python_options(script: str) -> frozenset[str]:
    """Every option string given to an ``add_argument`` call in a Python tool."""
    tree = ast.parse((REPO / script).read_text(encoding='utf-8'), filename=script)
    options = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'add_argument':
            options.update(a.value for a in node.args
                           if isinstance(a, ast.Constant) and isinstance(a.value, str)
                           and a.value.startswith('-'))
    return frozenset(options)


def shell_flag_defined(script: str, flag: str) -> bool:
    """A shell script accepts ``flag`` if its text names it or a Python tool it runs defines it."""
    text = (REPO / script).read_text(encoding='utf-8')
    if re.search(re.escape(flag) + r'(?![\w-])', text):
        return True
    forwarded = {m for m in SCRIPT.findall(text) if m.endswith('.py') and (REPO / m).is_file()}
    return any(flag in python_options(py) for py in forwarded)


def check_command(command: str) -> list[str]:
    """Problems of one command (empty when it matches the repository)."""
    problems = []
    for script, arguments in script_calls(command):
        if not (REPO / script).is_file():
            problems.append(f'{script} does not exist')
            continue
        for flag in flags_used(arguments):
            known = (flag in python_options(script) if script.endswith('.py')
                     else shell_flag_defined(script, flag))
            if not known:
                problems.append(f'{script} has no option {flag}')
    for config in CONFIG.findall(command):
        if not (REPO / config).is_file():
            problems.append(f'{config} does not exist')
    return problems


def required_needs(command: str) -> set[str]:
    """What a command needs beyond a plain CPU machine, as far as its text shows."""
    needs = set()
    if 'data/mscoco' in command:
        needs.add('coco')
    if 'slurm_train.sh' in command or re.match(r'\s*srun\b', command):
        needs.add('slurm')
    for script, arguments in script_calls(command):
        if script in DATA_TOOLS and any(COCO_CONFIG.fullmatch(a) for a in arguments):
            needs.add('coco')
    return needs


# ----------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------
def test_docs_found():
    files = doc_files()
    assert 'README.md' in files and 'README_zh-CN.md' in files
    for page in ('get_started.md', 'custom_dataset.md', 'faq.md'):
        assert f'docs/en/{page}' in files and f'docs/zh_cn/{page}' in files


@pytest.mark.parametrize('doc', doc_files())
def test_commands_match_repository(doc):
    commands = commands_of(REPO / doc)
    problems = [f'{c!r}: {p}' for c in commands for p in check_command(c)]
    assert not problems, f'{doc}:\n' + '\n'.join(problems)


@pytest.mark.parametrize('doc', doc_files())
def test_needs_markers(doc):
    problems = []
    for needs, commands in blocks_of(REPO / doc):
        unknown = needs - NEEDS_VALUES
        if unknown:
            problems.append(f'unknown needs {sorted(unknown)} (known: {sorted(NEEDS_VALUES)})')
        for command in commands:
            missing = required_needs(command) - needs
            if missing and doc != 'README.md':  # README.md's indented blocks cannot carry markers
                marker = f'<!-- needs: {", ".join(sorted(missing))} -->'
                problems.append(f'{normalize(command)!r} needs a {marker} line before its block')
    assert not problems, f'{doc}:\n' + '\n'.join(problems)


def _translation_pairs() -> list[tuple[str, str]]:
    pairs = [READMES]
    en = REPO / 'docs' / 'en'
    zh = REPO / 'docs' / 'zh_cn'
    names = {p.relative_to(en) for p in en.rglob('*.md')} | {p.relative_to(zh) for p in zh.rglob('*.md')}
    pairs += [(f'docs/en/{n}', f'docs/zh_cn/{n}') for n in sorted(names, key=str)]
    return pairs


@pytest.mark.parametrize('pair', _translation_pairs(), ids=lambda p: p[0])
def test_translations_show_the_same_commands(pair):
    en, zh = (REPO / p for p in pair)
    assert en.is_file() and zh.is_file(), f'{pair}: both languages must exist'
    en_cmds, zh_cmds = set(commands_of(en)), set(commands_of(zh))
    assert en_cmds, f'{pair[0]} shows no commands: did the parser break?'
    assert en_cmds == zh_cmds, (f'only in {pair[0]}: {sorted(en_cmds - zh_cmds)}\n'
                                f'only in {pair[1]}: {sorted(zh_cmds - en_cmds)}')


def test_checker_catches_mistakes():
    """The checks above would notice a renamed flag, tool or config, and a missing marker."""
    assert check_command('python tools/train.py configs/fcos_effb0.py --resume --auto-scale-lr') == []
    assert check_command('python tools/train.py configs/fcos_effb0.py --no-such-flag')
    assert check_command('python tools/no_such_tool.py configs/fcos_effb0.py')
    assert check_command('python tools/test.py configs/no_such_config.py ckpt.pth')
    assert check_command('tools/dist_train.sh configs/fcos_effb0.py 8 --resume') == []
    assert check_command('tools/dist_train.sh configs/fcos_effb0.py 8 --no-such-flag')
    assert check_command('NNODES=2 tools/dist_train.sh configs/fcos_effb0.py 8 --bad') == [
        'tools/dist_train.sh has no option --bad']
    assert check_command('torchrun --nnodes 2 tools/train.py configs/fcos_effb0.py --launcher pytorch') == []
    assert check_command('python tools/infer.py IMAGE|DIR CONFIG CKPT --no-such-flag')
    assert script_calls("grep -o 'a\\|b' /proc/cpuinfo | sort -u && bash tools/install.sh") == [
        ('tools/install.sh', [])]
    assert required_needs('python tools/train.py configs/fcos_effb0.py') == {'coco'}
    assert required_needs('python tools/train.py configs/fcos_effb0_demo.py') == set()
    blocks = collect_blocks('<!-- needs: coco, gpu -->\n```shell\n# a comment\npython tools/train.py \\\n'
                            '    configs/fcos_effb0.py --amp\n```\n    bash tools/run_demo.sh\n',
                            indented=True)
    assert blocks == [({'coco', 'gpu'}, ['python tools/train.py configs/fcos_effb0.py --amp']),
                      (set(), ['bash tools/run_demo.sh'])]
