"""Every command in the documentation runs: the test suite runs it, or its block says what it needs.

Commands are the lines of the fenced ```shell (``bash``, ``sh``, ``console``) blocks of README.md,
README_zh-CN.md and docs/**/*.md, comments dropped and ``\\`` continuations joined. The convention:

* a block whose commands cannot run on a CPU machine with the built-in demo data carries a line
  ``<!-- needs: coco -->`` (or ``gpu``, ``slurm``, several separated by commas) right before its
  opening fence; every other shell block is runnable here.

What is guarded:

1. every command that runs a repository script (``tools/``, ``benchmarks/``; launched directly, by
   ``python``, ``bash``, ``torchrun``, ``srun`` or behind ``VAR=value``) names a script that exists, uses
   only flags it defines (``add_argument`` of Python tools; for shell scripts their text or the Python
   tool they forward to) and only configs that exist; any other command is one of the few programs of
   ``OTHER_PROGRAMS`` (pip, file utilities, ``python -c``, pytest);
2. every command of an unmarked block is run by the test suite: its script is run by a test, or by a
   script a test runs (the quick start ``tools/run_demo.sh`` runs ``tools/run_demo.py``, which runs the
   tools as subprocesses), and each of its flags is passed to that script in one of those runs (a flag
   given to a forwarding shell script also counts when passed to the Python tool it forwards to).
   The runs are read statically from tests/**/*.py (see ``python_runs``): ``run_tool('tools/x.py',
   ...)``, argv lists, ``subprocess.run``/``Popen`` and ``stages.run`` calls that name a script,
   and module functions with ``*args`` that run one (``infer(...)`` in test_onnx_infer.py);
   ``NOT_YET_RUN`` lists the gaps that are known, each with what would close it;
3. for marked blocks 1 still holds (a renamed flag breaks them too), and a command whose text shows
   that it needs COCO, slurm or GPUs (several nodes, more than 2 processes) must be in a block marked so;
4. the English and Chinese version of each page show the same commands with the same markers;
5. no command hides from these checks in an indented block or a non-shell fence.

A renamed flag or tool in the docs or in the tools breaks 1; a test that stops running a documented
command or flag breaks 2. Pure text and AST processing: no subprocess, no heavy imports, about a second.
"""
from __future__ import annotations

import ast
import re
import shlex
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent
READMES = ('README.md', 'README_zh-CN.md')
NEEDS_VALUES = {'coco', 'gpu', 'slurm'}
SHELL_LANGUAGES = ('shell', 'bash', 'sh', 'console')

FENCE = re.compile(r'^\s*```+\s*([\w+-]*)')
NEEDS = re.compile(r'^\s*<!--\s*needs:\s*([^>]*?)\s*-->\s*$')
#: a line that looks like a command (to find commands outside shell blocks)
COMMAND_LINE = re.compile(r'^\s*((python3?|bash|sh|torchrun|srun|\.venv/bin/python)\s+\S'
                          r'|(\./)?(tools|benchmarks)/\S+\.(py|sh)\b)')
INLINE_CODE = re.compile(r'`([^`\n]+)`')
SCRIPT = re.compile(r'(?:\./)?(?:tools|benchmarks)/[\w./-]+\.(?:py|sh)')
CONFIG = re.compile(r'(?<![\w./-])configs/[\w./-]+\.py')
FLAG = re.compile(r'^[\[(]*(--[A-Za-z0-9][\w-]*)')
ENV_ASSIGNMENT = re.compile(r'^[A-Za-z_]\w*=')
#: programs that run the repository script named somewhere after them
LAUNCHERS = {'python', 'python3', 'bash', 'sh', 'torchrun', 'srun', 'exec', 'nohup', 'time'}
#: doc commands that are not repository tools, hence not run by the tests: package installation,
#: shell built-ins and file utilities (the FAQ's manual mmcv build, links to the data)
OTHER_PROGRAMS = {'pip', 'pip3', 'cd', 'source', 'mkdir', 'ln', 'tar', 'sed', 'grep', 'sort', 'ls', 'git'}
#: tools that read the data set of the config they are given
DATA_TOOLS = ('tools/train.py', 'tools/test.py', 'tools/dist_train.sh', 'tools/dist_test.sh',
              'tools/slurm_train.sh', 'tools/analysis_tools/browse_dataset.py',
              'tools/deploy/test_onnx.py', 'tools/deploy/quantize_onnx.py')
#: configs that read data/mscoco (the rest read the built-in demo data)
COCO_CONFIG = re.compile(r'(?<![\w./-])configs/(?!.*demo)[\w.-]+\.py')

#: Unmarked doc commands (script, flag; '' for the script itself) that no test runs yet, and what would
#: run them. test_not_yet_run_is_current fails when an entry is run by a test (delete it) or no
#: longer documented; test_unmarked_commands_are_run_by_tests fails on any gap not listed here.
NOT_YET_RUN = {  # (script, flag): where the docs show it -> the run that would cover it
}


# ----------------------------------------------------------------------------------------------------
# collecting commands
# ----------------------------------------------------------------------------------------------------
class Command(NamedTuple):
    line: int  # 1-based line of the doc where the command starts
    text: str
    needs: frozenset  # what the block's <!-- needs: ... --> line declares


def normalize(command: str) -> str:
    """One command as compared between languages: trailing comment dropped, whitespace collapsed."""
    command = re.sub(r'(^|\s)#.*$', '', command)
    return ' '.join(command.split())


def join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``(line, command)`` of numbered shell lines: comments and blank lines dropped, ``\\`` joined."""
    commands, current, start = [], '', 0
    for number, line in lines:
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith('#')):
            continue
        if not current:
            start = number
        if stripped.endswith('\\'):
            current += stripped[:-1].rstrip() + ' '
            continue
        commands.append((start, normalize(current + stripped)))
        current = ''
    if current.strip():
        commands.append((start, normalize(current)))
    return [(n, c) for n, c in commands if c]


def collect_commands(text: str) -> tuple[list[Command], list[str]]:
    """The commands of every shell block, and the problems of the text: an unclosed block, or a line
    that looks like a command outside a shell block (indented, or in a ```text/unlabeled fence)."""
    commands: list[Command] = []
    problems: list[str] = []
    fence_lang = None  # language of the fenced block we are in, None outside
    body: list[tuple[int, str]] = []
    needs: frozenset = frozenset()
    previous = ''
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence_lang is None and m:
            fence_lang = m.group(1).lower()
            n = NEEDS.match(previous)
            needs = frozenset(v.strip() for v in n.group(1).split(',') if v.strip()) if n else frozenset()
            body = []
        elif fence_lang is not None and m and not m.group(1):
            if fence_lang in SHELL_LANGUAGES:
                commands += [Command(n, c, needs) for n, c in join_continuations(body)]
            fence_lang = None
        elif fence_lang is not None:
            body.append((number, line))
            if fence_lang not in SHELL_LANGUAGES + ('python',) and COMMAND_LINE.match(line):
                problems.append(f'line {number}: command in a ```{fence_lang} block, not a ```shell one: '
                                f'{line.strip()!r}')
        elif line.startswith('    ') and COMMAND_LINE.match(line):
            problems.append(f'line {number}: indented command, put it in a ```shell block: {line.strip()!r}')
        if line.strip():
            previous = line
    if fence_lang is not None:
        problems.append('unclosed ``` block')
    return commands, problems


def inline_commands(text: str) -> list[tuple[int, str]]:
    """``(line, command)`` of the inline code spans of the prose that spell a command with arguments
    (``python tools/x.py CONFIG --flag``, ``tools/dist_train.sh CONFIG GPUS``)."""
    commands, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            commands += [(number, span) for span in INLINE_CODE.findall(line)
                         if ' ' in span and COMMAND_LINE.match(span) and script_calls(span)]
    return commands


def doc_files() -> list[str]:
    files = [name for name in READMES if (REPO / name).is_file()]
    files += sorted(str(p.relative_to(REPO)) for p in (REPO / 'docs').rglob('*.md'))
    return files


def commands_of(doc: str) -> list[Command]:
    return collect_commands((REPO / doc).read_text(encoding='utf-8'))[0]


# ----------------------------------------------------------------------------------------------------
# what a command runs
# ----------------------------------------------------------------------------------------------------
OPERATORS = {'&&', '||', ';', '|', '&'}
ALTERNATIVE = '\ue000'  # stands for a synopsis's 'A|B' while the command is split


def _segments(command: str) -> list[list[str]]:
    """The command's words, split into simple commands at ``&&``, ``||``, ``;``, ``|`` and ``&``
    outside quotes, leading ``VAR=value`` assignments dropped. A ``|`` between two words
    (``IMAGE|DIR`` in a synopsis) is part of the word."""
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
    result = []
    for tokens in segments:
        while tokens and ENV_ASSIGNMENT.match(tokens[0]):
            tokens = tokens[1:]
        if tokens:
            result.append(tokens)
    return result


def _is_launcher(word: str) -> bool:
    return (word in LAUNCHERS or word.endswith('/python') or word.startswith('$')  # $PYTHON in scripts
            or re.fullmatch(r'python3?(\.\d+)?', word) is not None)


def _script_call(tokens: list[str]) -> tuple[str, list[str]] | None:
    if SCRIPT.fullmatch(tokens[0]):
        start = 0
    elif _is_launcher(tokens[0]):
        start = next((i for i, t in enumerate(tokens) if SCRIPT.fullmatch(t)), None)
        if start is None:
            return None
    else:
        return None
    return tokens[start].removeprefix('./'), tokens[start + 1:]


def script_calls(command: str) -> list[tuple[str, list[str]]]:
    """``(script, arguments)`` for each repository script the command runs."""
    return [call for call in map(_script_call, _segments(command)) if call]


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


@lru_cache(maxsize=None)
def forwarded_tools(script: str) -> frozenset[str]:
    """The Python tools a shell script runs (``tools/dist_train.sh`` -> ``tools/train.py``)."""
    text = (REPO / script).read_text(encoding='utf-8')
    return frozenset(m for m in SCRIPT.findall(text) if m.endswith('.py') and (REPO / m).is_file())


def shell_flag_defined(script: str, flag: str) -> bool:
    """A shell script accepts ``flag`` if its text names it or a Python tool it runs defines it."""
    text = (REPO / script).read_text(encoding='utf-8')
    if re.search(re.escape(flag) + r'(?![\w-])', text):
        return True
    return any(flag in python_options(py) for py in forwarded_tools(script))


def _other_program(tokens: list[str]) -> bool:
    """A command that is not a repository tool but one of the known programs."""
    program = tokens[0]
    if program in OTHER_PROGRAMS:
        return True
    if re.fullmatch(r'python3?(\.\d+)?', program) or program.endswith('/python'):
        return tokens[1:2] == ['-c'] or tokens[1:3] == ['-m', 'pytest']
    return False


def check_command(command: str, programs: bool = True) -> list[str]:
    """Problems of one command (empty when it matches the repository); ``programs=False``: the
    programs that are not repository scripts are not checked."""
    problems = []
    for tokens in _segments(command):
        call = _script_call(tokens)
        if call is None:
            if programs and not _other_program(tokens):
                problems.append(f'{tokens[0]!r} is neither a repository tool nor in OTHER_PROGRAMS')
            continue
        script, arguments = call
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


def _count(text: str) -> int:
    return int(text) if text.isdigit() else 0


def required_needs(command: str) -> set[str]:
    """What a command needs beyond a plain CPU machine, as far as its text shows: COCO (its data, or a
    COCO config given to a tool that reads the data set), slurm, or GPUs (several nodes, or more than
    the 2 processes per machine that the CPU examples use)."""
    needs = set()
    if 'data/mscoco' in command:
        needs.add('coco')
    if 'slurm_train.sh' in command or any(t[0] == 'srun' for t in _segments(command)):
        needs.add('slurm')
    nodes = re.findall(r'(?:\bNNODES=|--nnodes[= ])(\S+)', command)
    procs = re.findall(r'--nproc[_-]per[_-]node[= ](\S+)', command)
    for script, arguments in script_calls(command):
        if script in DATA_TOOLS and any(COCO_CONFIG.fullmatch(a) for a in arguments):
            needs.add('coco')
        position = {'tools/dist_train.sh': 1, 'tools/dist_test.sh': 2}.get(script)
        if position is not None and len(arguments) > position:
            procs.append(arguments[position])
    if any(_count(n) > 1 for n in nodes) or any(_count(p) > 2 for p in procs):
        needs.add('gpu')
    return needs


# ----------------------------------------------------------------------------------------------------
# what the test suite runs
# ----------------------------------------------------------------------------------------------------
#: calls that run the command their arguments spell (tests/conftest.py's run_tool, subprocess.run and
#: Popen, run_demo.py's stages.run)
RUNNERS = {'run_tool', 'run', 'Popen', 'check_call', 'check_output'}


def _string(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _script_path(node: ast.AST, names: dict[str, str]) -> str | None:
    """The repository script an expression names: ``'tools/x.py'``, ``osp.join(REPO, 'tools', 'x.py')``
    or a module-level name bound to one of them."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'join':
        path = '/'.join(s for s in map(_string, node.args) if s is not None)
    else:
        path = (_string(node) or '').removeprefix('./')
    return path if SCRIPT.fullmatch(path) else None


def _flags_in(nodes: list[ast.AST], helpers: dict[str, set[str]]) -> set[str]:
    """Flag literals in argument expressions, and those of the module's functions called there
    (``*_train_args(...)`` in test_compat.py)."""
    flags = set()
    for node in nodes:
        for sub in ast.walk(node):
            s = _string(sub)
            if s is not None and FLAG.match(s):
                flags.add(s.split('=')[0])
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name):
                flags |= helpers.get(sub.func.id, set())
    return flags


def _is_argv(items: list[ast.AST]) -> bool:
    """A list literal is a command line if it starts with the interpreter (``sys.executable``) or a
    launcher (``'bash'``); a list of paths is not."""
    first = items[0]
    return _string(first) in LAUNCHERS or isinstance(first, ast.Attribute) and first.attr == 'executable'


def python_runs(source: str, filename: str) -> list[tuple[str, set[str], int]]:
    """``(script, flags, line)`` for every repository script the Python source runs."""
    tree = ast.parse(source, filename=filename)
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            script = _script_path(node.value, names)
            if script:
                names[node.targets[0].id] = script
    helpers: dict[str, set[str]] = {}
    wrappers: dict[str, str] = {}  # module function with *args that runs one script
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            helpers[node.name] = _flags_in(node.body, {})
            scripts = {_script_path(sub, names) for sub in ast.walk(node)} - {None}
            if node.args.vararg and len(scripts) == 1:
                wrappers[node.name] = scripts.pop()
    runs = []
    for node in ast.walk(tree):
        items = None
        if isinstance(node, (ast.List, ast.Tuple)):
            items = node.elts
        elif isinstance(node, ast.Call):
            name = getattr(node.func, 'id', None) or getattr(node.func, 'attr', None)
            if name in wrappers:
                runs.append((wrappers[name], _flags_in(node.args, helpers), node.lineno))
            elif name in RUNNERS:
                items = node.args
        for i, item in enumerate(items or []):
            script = _script_path(item, names)
            if script:
                if isinstance(node, ast.Call) or _is_argv(items):
                    runs.append((script, _flags_in(items[i + 1:], helpers), node.lineno))
                break
    return runs


def shell_runs(text: str) -> list[tuple[str, set[str], int]]:
    """``(script, flags, line)`` for every repository script a shell script runs."""
    lines = list(enumerate(text.splitlines(), 1))
    return [(script, set(flags_used(arguments)), number)
            for number, command in join_continuations(lines)
            for script, arguments in script_calls(command)]


@lru_cache(maxsize=None)
def suite_runs() -> dict[str, dict[str, list[str]]]:
    """``{script: {flag: ['file:line', ...]}}`` (flag '' for the script itself) of every repository
    script the test suite runs, directly or through the scripts it runs."""
    todo = [p for p in sorted((REPO / 'tests').rglob('*.py')) if p != Path(__file__).resolve()]
    seen: set[Path] = set()
    runs: dict[str, dict[str, list[str]]] = {}
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        rel = str(path.relative_to(REPO))
        text = path.read_text(encoding='utf-8')
        found = python_runs(text, rel) if path.suffix == '.py' else shell_runs(text)
        for script, flags, line in found:
            for flag in {''} | flags:
                runs.setdefault(script, {}).setdefault(flag, []).append(f'{rel}:{line}')
            todo.append(REPO / script)
    return runs


def not_run(command: str, runs: dict[str, dict[str, list[str]]]) -> list[tuple[str, str]]:
    """``(script, flag)`` of the command that the runs do not cover (flag '' for the script)."""
    missing = []
    for script, arguments in script_calls(command):
        ran = runs.get(script, {})
        if not ran:
            missing.append((script, ''))
        for flag in flags_used(arguments):
            forwarded = script.endswith('.sh') and any(flag in runs.get(py, {})
                                                       for py in forwarded_tools(script))
            if flag not in ran and not forwarded:
                missing.append((script, flag))
    return missing


# ----------------------------------------------------------------------------------------------------
# tests
# ----------------------------------------------------------------------------------------------------
def test_docs_found():
    files = doc_files()
    assert 'README.md' in files and 'README_zh-CN.md' in files
    for page in ('get_started.md', 'custom_dataset.md', 'faq.md'):
        assert f'docs/en/{page}' in files and f'docs/zh_cn/{page}' in files
        assert commands_of(f'docs/en/{page}'), f'docs/en/{page} shows no commands: did the parser break?'


@pytest.mark.parametrize('doc', doc_files())
def test_commands_match_repository(doc):
    text = (REPO / doc).read_text(encoding='utf-8')
    commands, problems = collect_commands(text)
    problems += [f'line {c.line}: {c.text!r}: {p}' for c in commands for p in check_command(c.text)]
    problems += [f'line {n}: inline `{c}`: {p}' for n, c in inline_commands(text)
                 for p in check_command(c, programs=False)]
    assert not problems, f'{doc}:\n' + '\n'.join(problems)


@pytest.mark.parametrize('doc', doc_files())
def test_unmarked_commands_are_run_by_tests(doc):
    runs = suite_runs()
    problems = []
    for c in commands_of(doc):
        if c.needs:
            continue
        for script, flag in not_run(c.text, runs):
            if (script, flag) in NOT_YET_RUN or flag and script not in runs:
                continue  # a script no test runs is reported once, without its flags
            if not flag:
                problems.append(f'line {c.line}: {c.text!r}: no test runs {script}')
            else:
                used = ', '.join(sorted(f for f in runs[script] if f)) or 'no flags'
                problems.append(f'line {c.line}: {c.text!r}: no test runs {script} with {flag} '
                                f'(the tests run it with {used})')
    assert not problems, (f'{doc}: commands the test suite does not run (run them in a test, or mark '
                          f'the block <!-- needs: coco|gpu|slurm --> if they cannot run here):\n'
                          + '\n'.join(problems))


def test_not_yet_run_is_current():
    runs = suite_runs()
    documented = {gap for doc in doc_files() for c in commands_of(doc) if not c.needs
                  for gap in not_run(c.text, runs)}
    stale = {gap: f'run at {runs[gap[0]][gap[1]][:2]}' for gap in NOT_YET_RUN
             if gap[1] in runs.get(gap[0], {})}
    stale.update({gap: 'no unmarked doc command uses it' for gap in NOT_YET_RUN
                  if gap not in documented and gap not in stale})
    assert not stale, f'delete these NOT_YET_RUN entries: {stale}'


def test_suite_runs_what_the_quick_start_runs():
    """The static reading of the test suite finds the runs this file relies on (if it broke, every
    command would look unrun, or worse, a bug could make every command look run)."""
    runs = suite_runs()
    assert any(w.startswith('tests/test_tools/test_run_demo.py:') for w in runs['tools/run_demo.sh'][''])
    assert any(w.startswith('tools/run_demo.sh:') for w in runs['tools/run_demo.py']['--install-seconds'])
    assert any(w.startswith('tools/run_demo.py:') for w in runs['tools/train.py']['--resume'])
    assert any(w.startswith('tools/dist_train.sh:') for w in runs['tools/train.py']['--launcher'])
    assert any(w.startswith('tests/test_deploy/test_onnx_infer.py:')
               for w in runs['tools/deploy/onnx_infer.py']['--out-dir'])
    assert 'tools/install.sh' in runs and 'tools/slurm_train.sh' not in runs


@pytest.mark.parametrize('doc', doc_files())
def test_needs_markers(doc):
    problems = []
    for c in commands_of(doc):
        unknown = c.needs - NEEDS_VALUES
        if unknown:
            problems.append(f'line {c.line}: unknown needs {sorted(unknown)} (known: {sorted(NEEDS_VALUES)})')
        missing = required_needs(c.text) - c.needs
        if missing:
            marker = f'<!-- needs: {", ".join(sorted(missing))} -->'
            problems.append(f'line {c.line}: {c.text!r} needs a {marker} line before its block')
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
    en, zh = pair
    assert (REPO / en).is_file() and (REPO / zh).is_file(), f'{pair}: both languages must exist'
    en_cmds = {(c.text, tuple(sorted(c.needs))) for c in commands_of(en)}
    zh_cmds = {(c.text, tuple(sorted(c.needs))) for c in commands_of(zh)}
    assert en_cmds == zh_cmds, (f'(command, needs) only in {en}: {sorted(en_cmds - zh_cmds)}\n'
                                f'(command, needs) only in {zh}: {sorted(zh_cmds - en_cmds)}')


def test_checker_catches_mistakes():
    """The checks above would notice a renamed flag, tool or config, a missing marker, an unknown
    program, a command outside a shell block, and a documented flag that no test runs."""
    assert check_command('python tools/train.py configs/fcos_effb0.py --resume --auto-scale-lr') == []
    assert check_command('python tools/train.py configs/fcos_effb0.py --no-such-flag')
    assert check_command('python tools/no_such_tool.py configs/fcos_effb0.py')
    assert check_command('python tools/test.py configs/no_such_config.py ckpt.pth')
    assert check_command('tools/dist_train.sh configs/fcos_effb0.py 8 --resume') == []
    assert check_command('tools/dist_train.sh configs/fcos_effb0.py 8 --no-such-flag')
    assert check_command('NNODES=2 tools/dist_train.sh configs/fcos_effb0.py 8 --bad') == [
        'tools/dist_train.sh has no option --bad']
    assert check_command('torchrun --nnodes 2 tools/train.py configs/fcos_effb0.py --launcher pytorch') == []
    assert check_command('srun -p X python -u tools/train.py configs/fcos_effb0.py --launcher slurm') == []
    assert check_command('python tools/infer.py IMAGE|DIR CONFIG CKPT --no-such-flag')
    assert check_command('pip install x && python -c "import x" && cd y') == []
    assert check_command('python demo/image_demo.py img.jpg') and check_command('wget http://x')
    assert script_calls("grep -o 'a\\|b' /proc/cpuinfo | sort -u && bash tools/install.sh") == [
        ('tools/install.sh', [])]
    assert required_needs('python tools/train.py configs/fcos_effb0.py') == {'coco'}
    assert required_needs('python tools/train.py configs/fcos_effb0_demo.py') == set()
    assert required_needs('tools/dist_train.sh configs/fcos_effb0_demo.py 8') == {'gpu'}
    assert required_needs('tools/dist_train.sh configs/fcos_effb0_demo.py 2 --resume') == set()
    assert required_needs('NNODES=2 tools/dist_train.sh configs/fcos_effb0_demo.py 2') == {'gpu'}
    assert required_needs('torchrun --nproc_per_node=4 tools/train.py CONFIG --launcher pytorch') == {'gpu'}
    assert required_needs('tools/dist_test.sh configs/fcos_effb0.py x.pth 8') == {'coco', 'gpu'}
    commands, problems = collect_commands(
        '<!-- needs: coco, gpu -->\n```shell\n# a comment\npython tools/train.py \\\n'
        '    configs/fcos_effb0.py --amp\n```\n\n    bash tools/run_demo.sh\n'
        '```text\npython tools/x.py\n```\n')
    assert commands == [Command(4, 'python tools/train.py configs/fcos_effb0.py --amp',
                                frozenset({'coco', 'gpu'}))]
    assert [p.split(':')[0] for p in problems] == ['line 8', 'line 10']
    assert inline_commands('see `tools/train.py`, run `python tools/train.py CFG --amp` or\n'
                           '`NNODES=2 tools/dist_train.sh CFG 8`; `pip install x`\n'
                           '```shell\n`tools/a.sh b`\n```') == [(1, 'python tools/train.py CFG --amp')]
    # the coverage reading: what a test runs, and which documented flags that leaves out
    runs: dict[str, dict[str, list[str]]] = {}
    source = ("from .conftest import run_tool\nTOOL = osp.join(REPO, 'tools', 'deploy', 'onnx_infer.py')\n"
              "def _args(w):\n    return ['--work-dir', w]\n"
              "def infer(*args):\n    return subprocess.run([sys.executable, TOOL, *args])\n"
              "subprocess.run(run_tool('tools/train.py', CFG, '--resume', *_args(w)))\n"
              "subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',\n"
              "                osp.join(REPO, 'tools', 'test.py'), '--launcher', 'pytorch'])\n"
              "infer(model, img, '--out-dir', out)\nFILES = ['tools/calops.py']\n")
    for script, flags, line in python_runs(source, 'test_x.py'):
        for flag in {''} | flags:
            runs.setdefault(script, {}).setdefault(flag, []).append(f'test_x.py:{line}')
    assert {s: sorted(f) for s, f in runs.items()} == {
        'tools/deploy/onnx_infer.py': ['', '--out-dir'], 'tools/train.py': ['', '--resume', '--work-dir'],
        'tools/test.py': ['', '--launcher']}
    assert not_run('python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]', runs) == []
    assert not_run('python tools/train.py CONFIG --workdir DIR --amp', runs) == [
        ('tools/train.py', '--workdir'), ('tools/train.py', '--amp')]
    assert not_run('tools/dist_train.sh CONFIG 2 --resume', runs) == [('tools/dist_train.sh', '')]
    assert not_run('tools/dist_train.sh CONFIG 2 --resume', {**runs, 'tools/dist_train.sh': {'': []}}) == []
    assert shell_runs('cd x || exit 1\nPYTHONPATH=. \\\n  $PYTHON -m torch.distributed.run \\\n'
                      '  tools/train.py "$CONFIG" --launcher pytorch "${@:3}"\n') == [
        ('tools/train.py', {'--launcher'}, 2)]
