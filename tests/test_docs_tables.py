"""The published numbers render and agree with where they come from.

1. Every Markdown table of ``benchmarks/RESULTS.md``, the READMEs, ``CHANGELOG.md`` and ``docs/**/*.md``
   renders as a table (GitHub-flavoured Markdown): a separator row right under the header with the header's
   cell count, every body row with the header's cell count, at least one body row. A table written without
   its separator line renders as a paragraph of pipes; one with no rows is an empty promise.
2. The figures that README*, docs and config comments quote from ``benchmarks/RESULTS.md`` are the ones it
   has (``QUOTES``: where each is quoted, where RESULTS has it, and how the quoted figure follows from it:
   the same number, or a rounding or ratio of the RESULTS numbers). RESULTS' own sentences that restate its
   tables are checked the same way. A quote that no longer matches its text, or a RESULTS line that moved,
   fails too, so the list cannot silently go stale.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import pytest

from tests.conftest import REPO

FENCE = re.compile(r'^\s*(```|~~~)')
SEPARATOR_CELL = re.compile(r'^\s*:?-+:?\s*$')


def table_docs() -> list[str]:
    import glob
    import os.path as osp
    names = ['benchmarks/RESULTS.md', 'CHANGELOG.md'] + sorted(
        osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'README*.md')))
    names += sorted(osp.relpath(p, REPO) for p in glob.glob(osp.join(REPO, 'docs', '**', '*.md'),
                                                            recursive=True))
    return [n for n in names if osp.isfile(osp.join(REPO, n))]


def cells(line: str) -> list[str]:
    """A table row's cells as GitHub splits them: on every ``|`` not escaped by a backslash (code spans
    included), outer pipes optional."""
    row = line.strip()
    if row.startswith('|'):
        row = row[1:]
    if row.endswith('|') and not row.endswith('\\|'):
        row = row[:-1]
    return re.split(r'(?<!\\)\|', row)


def table_problems(text: str) -> list[str]:
    """``'line N: problem'`` for every table of ``text`` (Markdown) that does not render as meant."""
    problems, lines, in_fence, i = [], text.splitlines(), False, 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            in_fence = not in_fence
        if in_fence or not line.lstrip().startswith('|'):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].lstrip().startswith('|'):
            i += 1
        block = lines[start:i]
        header = cells(block[0])
        if len(block) < 2 or not all(SEPARATOR_CELL.match(c) for c in cells(block[1])):
            problems.append(f'line {start + 1}: table without a separator row under its header '
                            f'(renders as text): {block[0][:80]}')
            continue
        if len(cells(block[1])) != len(header):
            problems.append(f'line {start + 2}: separator has {len(cells(block[1]))} cells, header '
                            f'{len(header)}: {block[0][:80]}')
        if len(block) == 2:
            problems.append(f'line {start + 1}: table with a header and no rows: {block[0][:80]}')
        for k, row in enumerate(block[2:], start + 3):
            if len(cells(row)) != len(header):
                problems.append(f'line {k}: {len(cells(row))} cells, header {len(header)}: {row[:80]}')
    return problems


@pytest.mark.parametrize('doc', table_docs())
def test_every_table_renders(doc):
    with open(f'{REPO}/{doc}') as f:
        problems = table_problems(f.read())
    assert not problems, f'{doc}:\n' + '\n'.join(problems)


def test_table_checker_catches_what_does_not_render():
    good = '| a | b |\n|---|:-:|\n| 1 | `x \\| y` |\n'
    assert table_problems(good) == []
    assert table_problems('```\n| not | a table |\n```\n') == []
    no_separator = '| iteration | main MB |\n| 1 | 1773 |\n'
    assert 'without a separator' in table_problems(no_separator)[0]
    empty = "| model |  | s/iteration |\n|---|---|\n"  # what RESULTS once had for the peer comparison
    assert len(table_problems(empty)) == 2  # separator 2 cells vs header 3; no rows
    assert 'no rows' in table_problems('| a | b |\n|---|---|\n')[0]
    assert '3 cells, header 2' in table_problems('| a | b |\n|---|---|\n| 1 | 2 | 3 |\n')[0]


# ---- figures quoted from RESULTS ------------------------------------------------------------------------

@dataclass
class Quote:
    """``doc`` quotes a figure (the groups of ``quoted``, a regex that must match ``doc`` exactly once);
    RESULTS has it (the groups of ``source``, matching RESULTS exactly once); ``expect`` turns the RESULTS
    groups into the quoted strings."""
    doc: str
    quoted: str
    source: str
    expect: Callable[..., tuple]
    why: str


def same(*groups: str) -> tuple:
    return groups


def fixed(digits: int, *values: float) -> tuple:
    return tuple(f'{v:.{digits}f}' for v in values)


NUM = r'([\d.,]+)'
QAT_MAPS = (r'\| float checkpoint, PyTorch \| ([\d.]+) \|\n'
            r'\| float checkpoint fine-tuned like QAT [^\n]*\n'
            r'\| QAT \(100 iterations\), PyTorch with the quantization simulated \| ([\d.]+) \|\n'
            r'\| QAT, exported QDQ model in ONNX Runtime \(int8 kernels\) \| ([\d.]+) \|')
QAT_CONTROL = (r'\| float checkpoint, PyTorch \| ([\d.]+) \|\n'
               r'\| float checkpoint fine-tuned like QAT \(100 iterations, no quantization\), PyTorch '
               r'\| ([\d.]+) \|\n'
               r'\| QAT \(100 iterations\), PyTorch with the quantization simulated \| ([\d.]+) \|')
RUN_TOTAL = r'\*\*total after install\*\* \| \*\*[\d.]+ \(([\d.]+) min\)\*\*'
RUN_TRAIN = r'\| train \(600 iterations x 8 images, validations included\) \| ([\d.]+) \|'
RUN_MAP = r'\| bbox mAP \(demo val\) \| ([\d.]+) \| ([\d.]+) \|'
DEMO_COST = r'params/FLOPs \(([\d.]+) M, ([\d.]+) GFLOPs at 320x320\)'
EFFB0_ROW = (r'\| fcos_effb0 \(HAT recipe\) \| [\d.]+ / ([\d.]+) \| [\d.]+ / ([\d.]+) \| [\d.]+ / ([\d.]+) '
             r'\| ([\d.]+) M \| ([\d.]+) \|')
SEP_ROW = r'\| fcos_effb0-sep \| [\d./ ]+ \| [\d./ ]+ \| [\d./ ]+ \| ([\d.]+) M \| ([\d.]+) \|'
LEVELS = r'(\d+)% of the\s+positives are on P3, (\d+)% on P4, (\d+)% on P5'
AP_SIZES = r'\(AP small ([\d.]+), medium ([\d.]+), large ([\d.]+)\)'
SPEED_ROW = r'\| {} \| ([\d.]+) \| ([\d.]+) \|'
RACCOON_MAP = r'`tools/test.py` on `iter_300.pth`: bbox mAP \*\*([\d.]+)\*\*'
INSTALL = r'\| first \(empty caches: download everything, build mmcv\) \| ([\d.]+) min \| ([\d.]+) min \|'
MEM_ROW = r'\| `{}` \| ([\d.]+) GiB \| ([\d.]+) GiB \| ([\d.]+) GiB \|'
RACCOON_TRAIN = r'\| `tools/train.py` \| [\d.]+ \(([\d.]+) min\) \|'


DATASET_SCALE = (r'118,287 images \(64x64 JPEGs\), ([\d,]+) boxes[\s\S]*?'
                 r'\| 118,287 \| [\d.]+ \| \*\*[\d.]+\*\* \| (\d+) \| \*\*(\d+)\*\* \|')


def per_box(mib: str, boxes: str) -> str:
    """bench_dataset.py's MB are MiB (growth of VmRSS / 2**20)."""
    return f'{int(mib) * 2**20 / int(boxes.replace(",", "")):.0f}'


EN, ZH = 'README.md', 'README_zh-CN.md'
R50 = SPEED_ROW.format(r'mmdet FCOS-R50 \(stock config\)')
STAGE_TIMES = r' \|(?: [\d.]+ \|){5} ([\d.]+) \|'  # bench_demo_speed.py: five stages, then the total
NCHW_ROW = r'\| padded to 32 only \(320x320\)' + STAGE_TIMES
NHWC_ROW = r'\| \+ `channels_last` \(`ChannelsLastHook`\)' + STAGE_TIMES


ONNX_LAT = (r'\| {} \| PyTorch eager \| ([\d.]+) \|[^\n]*\n\| {} \| ORT float \| ([\d.]+) \|[^\n]*\n'
            r'\| {} \| ORT int8 \| ([\d.]+) \| [\d.]+x \| ([\d.]+)x \|')  # ... and int8 vs float
ONNX_LAT_320, ONNX_LAT_512 = (ONNX_LAT.format(*[f'{s}x{s}'] * 3) for s in (320, 512))
ONNX_MAPS = r'\| ORT float \| ([\d.]+) \| [\d.]+ \| [\d.]+ \|\n\| ORT int8 \| ([\d.]+) \| [\d.]+ \| [\d.]+ \|'
ONNX_INT8_VS_FLOAT = ONNX_LAT_320 + r'[\s\S]*?' + ONNX_LAT_512 + r'[\s\S]*?' + ONNX_MAPS


def int8_doc_figures(p3, f3, i3, r3, p5, f5, i5, r5, fmap, imap):
    """(int8 mAP, float mAP, int8 speed-up over float at 320, at 512) as get_started quotes them."""
    return imap, fmap, r3, r5


QUOTES = [
    # README / README_zh-CN model table and get_started: ONNX Runtime float / int8 (bench_onnx.py)
    *[Quote(doc, r'\| 0\.\d+ / 0\.\d+ \| ([\d.]+) \| ([\d.]+) / ([\d.]+) / ([\d.]+) ms \|',
            ONNX_LAT_320 + r'[\s\S]*?' + ONNX_MAPS, lambda p, f, i, r, fm, im: (im, p, f, i),
            'demo row: int8 mAP, latency at 320') for doc in (EN, ZH)],
    *[Quote(doc, r'([\d.]+) / ([\d.]+) / ([\d.]+) ms[）)]', ONNX_LAT_512, lambda p, f, i, r: (p, f, i),
            'demo model at 512')
      for doc in (EN, ZH)],
    Quote('docs/en/get_started.md', r'int8 scores\s+([\d.]+) bbox mAP against the float model\'s ([\d.]+) '
          r'on the 60 demo val images, and runs\s+([\d.]+)x faster than ONNX Runtime float at 320x320 and '
          r'([\d.]+)x',
          ONNX_INT8_VS_FLOAT, int8_doc_figures, 'int8 vs float'),
    Quote('docs/zh_cn/get_started.md', r'得到 ([\d.]+) bbox mAP，\s*浮点模型为 ([\d.]+)；在 320x320 上比 '
          r'ONNX Runtime 浮点快 ([\d.]+)x，在 512x512 上快 ([\d.]+)x', ONNX_INT8_VS_FLOAT, int8_doc_figures,
          'int8 vs float'),
    # README / README_zh-CN: the main command
    Quote(EN, r'it takes ([\d.]+) minutes on 2 CPU cores', RUN_TOTAL, same, 'main command wall time'),
    Quote(ZH, r'在 2 个 CPU 核上耗时 ([\d.]+) 分钟', RUN_TOTAL, same, 'main command wall time'),
    *[Quote(doc, q, RUN_TRAIN, lambda s: fixed(1, float(s) / 60), 'training minutes of the main command')
      for doc, q in ((EN, r'\(([\d.]+) of them training'), (ZH, r'其中训练 ([\d.]+) 分钟'))],
    Quote(EN, r'reaches \*\*([\d.]+) bbox mAP\*\* in PyTorch and ([\d.]+) with ONNX Runtime', RUN_MAP,
          same, 'demo mAPs'),
    Quote(ZH, r'PyTorch 达到\s+\*\*([\d.]+) bbox mAP\*\*，ONNX Runtime 同样为 ([\d.]+)', RUN_MAP,
          same, 'demo mAPs'),
    *[Quote(doc, r'\| 320x320 \| ([\d.]+) M \| ([\d.]+) G \| ([\d.]+) / ([\d.]+) \|',
            DEMO_COST + r'[\s\S]*?' + RUN_MAP, same, 'model table, demo row') for doc in (EN, ZH)],
    *[Quote(doc, r'\| 512x512 \| ([\d.]+) M \| ([\d.]+) G \|', EFFB0_ROW,
            lambda b, n, h, p, f: fixed(2, float(p), float(f)), 'model table, COCO row') for doc in (EN, ZH)],
    # params/FLOPs at 512 (README, README_zh-CN, get_started en/zh)
    *[Quote(doc, q, EFFB0_ROW, lambda b, n, h, p, f: fixed(2, *map(float, (p, f, b, n, h))),
            'fcos_effb0 cost')
      for doc, q in (
          (EN, r'`fcos_effb0` ([\d.]+) M params / ([\d.]+) GFLOPs \(backbone ([\d.]+), BiFPN ([\d.]+), '
               r'head ([\d.]+)\)'),
          (ZH, r'`fcos_effb0` 为 ([\d.]+) M 参数 / ([\d.]+) GFLOPs（backbone ([\d.]+)，BiFPN ([\d.]+)，'
               r'head ([\d.]+)）'),
          ('docs/en/get_started.md', r'([\d.]+) M parameters and ([\d.]+) GFLOPs \(backbone ([\d.]+), '
                                     r'BiFPN ([\d.]+), head ([\d.]+)\)'),
          ('docs/zh_cn/get_started.md', r'([\d.]+) M 参数，([\d.]+) GFLOPs（backbone ([\d.]+)，'
                                        r'BiFPN ([\d.]+)，head ([\d.]+)）'))],
    *[Quote(doc, q, SEP_ROW, lambda p, f: fixed(2, float(p), float(f)), 'fcos_effb0-sep cost')
      for doc, q in ((EN, r'`fcos_effb0-sep` ([\d.]+) M / ([\d.]+) G'),
                     (ZH, r'`fcos_effb0-sep` 为 ([\d.]+) M / ([\d.]+) G'))],
    # own data docs: where the positives sit and AP by size
    *[Quote(doc, q, LEVELS, same, 'positives per FPN level')
      for doc, q in (('docs/en/custom_dataset.md',
                      r'(\d+)% of the positives are on P3, (\d+)% on P4, (\d+)% on P5'),
                     ('docs/zh_cn/custom_dataset.md',
                      r'(\d+)% 的\s+正样本在 P3，(\d+)% 在 P4，(\d+)% 在 P5'))],
    *[Quote(doc, r'AP small ([\d.]+)[,，]\s*medium ([\d.]+)[,，]\s*large ([\d.]+)', AP_SIZES, same,
            'AP by size') for doc in ('docs/en/custom_dataset.md', 'docs/zh_cn/custom_dataset.md')],
    # get_started (en, zh): QAT of the demo model (bench_qat.py)
    *[Quote(doc, q, QAT_MAPS, same, 'QAT mAPs') for doc, q in (
        ('docs/en/get_started.md',
         r'checkpoint \(([\d.]+) bbox mAP\) the QAT model scores ([\d.]+) simulated and ([\d.]+) as'),
        ('docs/zh_cn/get_started.md',
         r'checkpoint（([\d.]+) bbox mAP）出发，\nQAT 模型在模拟 int8 下为 ([\d.]+)，'
         r'导出的 int8 ONNX 模型在 ONNX Runtime 中为 ([\d.]+)'))],
    *[Quote(doc, q, QAT_CONTROL,
            lambda f, t, q: (t, *fixed(1, 100 * (float(t) - float(f)), 100 * (float(q) - float(f)))),
            'QAT vs its float fine-tune') for doc, q in (
        ('docs/en/get_started.md', r'of the same schedule \(`configs/fcos_effb0_demo_finetune.py`, the '
                                   r'QAT\s+config\'s\s+parent\) scores ([\d.]+): the extra iterations are '
                                   r'([\d.]+) of\s+QAT\'s ([\d.]+) points'),
        ('docs/zh_cn/get_started.md', r'同样日程的浮点微调（`configs/fcos_effb0_demo_finetune.py`，'
                                      r'\s*QAT 配置的父配置）\s*得到\s*([\d.]+)：额外的迭代占\s*([\d.]+)\s*'
                                      r'个点，QAT 共高出\s*([\d.]+)\s*个点'))],
    # own data docs: the raccoon example's run (test mAP, training minutes)
    *[Quote(doc, q, RACCOON_MAP, same, 'raccoon test mAP')
      for doc, q in (('docs/en/custom_dataset.md', r'\*\*([\d.]+) bbox mAP\*\* on the 40 val photos'),
                     ('docs/zh_cn/custom_dataset.md', r'在 40 张验证照片上为 \*\*([\d.]+) bbox mAP\*\*'))],
    *[Quote(doc, q, RACCOON_TRAIN, same, 'raccoon training minutes')
      for doc, q in (('docs/en/custom_dataset.md', r'`tools/train.py` took ([\d.]+) minutes'),
                     ('docs/zh_cn/custom_dataset.md', r'`tools/train.py` 耗时 ([\d.]+) 分钟'))],
    # README / get_started (en, zh): a first install (bench_install.py)
    *[Quote(doc, q, INSTALL, same, 'first install minutes') for doc, q in (
        (EN, r'took ([\d.]+) minutes on 2 cores, ([\d.]+) of them the mmcv build'),
        (ZH, r'耗时 ([\d.]+) 分钟，其中 ([\d.]+) 分钟用于编译 mmcv'))],
    Quote('docs/en/get_started.md', r'\(([\d.]+) of\s+the ([\d.]+) minutes of a first install', INSTALL,
          lambda total, build: (build, total), 'first install minutes'),
    Quote('docs/zh_cn/get_started.md', r'首次安装共 ([\d.]+) 分钟，其中\s*([\d.]+) 分钟花在编译 mmcv',
          INSTALL, same, 'first install minutes'),
    # FAQ (en, zh): peak memory of the inference tools (bench_infer_memory.py)
    *[Quote(doc, MEM_ROW.format(tool), MEM_ROW.format(tool), same, f'{tool} peak memory')
      for doc in ('docs/en/faq.md', 'docs/zh_cn/faq.md')
      for tool in ('tools/infer.py', 'tools/deploy/onnx_infer.py')],
    # config comments
    Quote('configs/fcos_effb0_demo.py', r'NHWC convolutions: ([\d.]+)x faster per iteration',
          NCHW_ROW + r'[\s\S]*?' + NHWC_ROW, lambda nchw, nhwc: fixed(2, float(nchw) / float(nhwc)),
          'channels_last speed-up'),
    *[Quote(doc, r'([\d.]+) minutes of training', RUN_TRAIN, lambda s: fixed(1, float(s) / 60),
            'demo training minutes')
      for doc in ('configs/fcos_effb0_demo.py', 'configs/_base_/schedules/demo_cpu.py')],
    # RESULTS restating its own tables
    Quote('benchmarks/RESULTS.md', r'buy (\d+) % less inference\s+time \((\d+) against (\d+) ms\) and '
          r'([\d.]+)x the training throughput', R50 + r'\n' + SPEED_ROW.format(r'fcos_effb0 \(HAT recipe\)')
          + r'\n' + SPEED_ROW.format('fcos_effb0-sep'),
          lambda rt, ri, t, i, st, si: (f'{100 * (1 - float(si) / float(i)):.0f}', si, i,
                                        f'{float(st) / float(t):.2f}'), 'separable head vs full'),
    Quote('benchmarks/RESULTS.md', r"LMDB's growth is ([\d.]+) MiB for ([\d,]+) boxes, ~(\d+) bytes per box",
          DATASET_SCALE, lambda boxes, coco, lmdb: (lmdb, boxes, per_box(lmdb, boxes)), 'LMDB bytes per box'),
    Quote('benchmarks/RESULTS.md', r'against (\d+) MiB, ~(\d+) bytes per box, for\s+CocoDataset',
          DATASET_SCALE, lambda boxes, coco, lmdb: (coco, per_box(coco, boxes)), 'CocoDataset bytes per box'),
]


def _read(name: str) -> str:
    with open(f'{REPO}/{name}') as f:
        return f.read()


def check_quote(q: Quote, docs: dict[str, str]) -> str | None:
    """None when ``q`` holds; otherwise what is wrong."""
    text = docs.get(q.doc) if q.doc in docs else _read(q.doc)
    results = docs.get('benchmarks/RESULTS.md') or _read('benchmarks/RESULTS.md')
    found = re.findall(q.quoted, text)
    if len(found) != 1:
        return f'{q.doc}: /{q.quoted}/ found {len(found)} times (want 1): update QUOTES with the text'
    src = re.findall(q.source, results)
    if len(src) != 1:
        return f'RESULTS.md: /{q.source[:80]}/ found {len(src)} times (want 1): update QUOTES with RESULTS'
    quoted = found[0] if isinstance(found[0], tuple) else (found[0],)
    source = src[0] if isinstance(src[0], tuple) else (src[0],)
    want = tuple(q.expect(*source))
    if quoted != want:
        return f'{q.doc} quotes {quoted} for {q.why}; RESULTS.md gives {want}'
    return None


@pytest.mark.parametrize('q', QUOTES, ids=lambda q: f'{q.doc}:{q.why}')
def test_quoted_figures_are_the_results(q):
    problem = check_quote(q, {})
    assert problem is None, problem


def test_quote_checker_catches_a_wrong_figure():
    results = _read('benchmarks/RESULTS.md')
    q = next(q for q in QUOTES if q.doc == 'README.md' and q.why == 'training minutes of the main command')
    readme = _read('README.md')
    assert check_quote(q, {'README.md': readme, 'benchmarks/RESULTS.md': results}) is None
    wrong = re.sub(r'\(([\d.]+) of them training', '(11.0 of them training', readme)
    assert 'RESULTS.md gives' in check_quote(q, {'README.md': wrong, 'benchmarks/RESULTS.md': results})
    moved = results.replace('| train (600 iterations', '| training (600 iterations')
    assert 'found 0 times' in check_quote(q, {'README.md': readme, 'benchmarks/RESULTS.md': moved})
