#!/usr/bin/env python
"""The custom-dataset tutorial's worked example (docs/en/custom_dataset.md, section 5), run as the page
shows it, timed and scored.

    .venv/bin/python benchmarks/bench_raccoon.py [--fresh] [--write]

Takes the page's ``my_configs/fcos_effb0_raccoon.py`` block and its ``python ...`` commands that name the
raccoon data or config, in the page's order, and runs each from the repository root (where the page runs
them; ``python`` is this interpreter). Refuses to start when the page's outputs (``data/raccoon``,
``my_configs/fcos_effb0_raccoon.py``, ``work_dirs/fcos_effb0_raccoon``, ``work_dirs/raccoon_browse``) exist;
``--fresh`` removes them first. Reads the val bbox mAP of every validation from the training log,
``tools/test.py``'s and ``tools/deploy/test_onnx.py``'s metrics, and measures each command's wall time and
CPU time (its processes' user + system time). Prints the tables and the machine (CPU, load before and
after); ``--write`` puts them into benchmarks/RESULTS.md, "Real photos" (commentary below the generated part
kept) and copies the detection sheet to ``docs/images/raccoon_detections.jpg``. About 10 minutes on 2 idle
cores.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import os.path as osp
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
PAGE = 'docs/en/custom_dataset.md'
CONFIG = 'my_configs/fcos_effb0_raccoon.py'
OUTPUTS = ('data/raccoon', CONFIG, 'work_dirs/fcos_effb0_raccoon', 'work_dirs/raccoon_browse')
SHEET = 'docs/images/raccoon_detections.jpg'
SECTION = "## Real photos: the custom-dataset tutorial's raccoon detector"
END_MARK = '<!-- end of bench_raccoon.py output; commentary below is kept by --write -->'


def page_steps(page: str = PAGE) -> tuple[str, list[str]]:
    """The page's config block and its raccoon commands (``python ...`` lines of its shell blocks that
    name the raccoon data or config), in order."""
    with open(osp.join(REPO, page), encoding='utf-8') as f:
        text = f.read()
    config = [b for b in re.findall(r'^```python\n(.*?)^```', text, flags=re.M | re.S)
              if b.startswith(f'# {CONFIG}\n')]
    if len(config) != 1:
        raise SystemExit(f'{page}: {len(config)} ```python blocks start with "# {CONFIG}", want one')
    commands = [line for block in re.findall(r'^```shell\n(.*?)^```', text, flags=re.M | re.S)
                for line in block.splitlines() if line.startswith('python ') and 'raccoon' in line]
    return config[0], commands


def run(command: str) -> tuple[float, float]:
    """``command`` from the repository root by the shell, as a user runs it (the page's ``*``), with
    ``python`` this interpreter: (wall s, CPU s of its processes); its output is shown only on failure."""
    assert command.startswith('python '), command
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(shlex.quote(sys.executable) + command[len('python'):], shell=True, cwd=REPO,
                          stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        print(proc.stdout[-3000:])
        raise SystemExit(f'failed ({proc.returncode}): {command}')
    return wall, cpu1.ru_utime - cpu0.ru_utime + cpu1.ru_stime - cpu0.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--fresh', action='store_true', help='remove the outputs of a previous run first')
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md and the page picture')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script

    from fcos_plugin.analysis.reports import read_scalars, training_log
    there = [o for o in OUTPUTS if osp.exists(osp.join(REPO, o))]
    if there and not args.fresh:
        raise SystemExit(f'{", ".join(there)} exist (a previous run): pass --fresh to remove them')
    for o in there:
        path = osp.join(REPO, o)
        print(f'removing {o}')
        shutil.rmtree(path) if osp.isdir(path) else os.remove(path)
    config, commands = page_steps()
    before = machine_facts()
    os.makedirs(osp.join(REPO, osp.dirname(CONFIG)), exist_ok=True)
    with open(osp.join(REPO, CONFIG), 'w') as f:
        f.write(config)
    times = []
    for command in commands:
        print(f'$ {command}', flush=True)
        wall, cpu = run(command)
        times.append((command, wall, cpu))
        print(f'  {wall:.1f} s wall, {cpu:.1f} s CPU', flush=True)
    work = osp.join(REPO, 'work_dirs', 'fcos_effb0_raccoon')
    _, val = read_scalars(training_log(work))
    with open(osp.join(work, 'test_metrics.json')) as f:
        test = json.load(f)
    onnx_test = [shlex.split(c) for c in commands if 'tools/deploy/test_onnx.py' in c][0]
    model = [a for a in onnx_test if a.endswith('.onnx')][0]
    with open(osp.join(REPO, osp.splitext(model)[0] + '_test_metrics.json')) as f:  # test_onnx.py's default
        onnx = json.load(f)['metrics']

    keys = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')
    stage_rows = ['| command of the page | wall s | CPU s |', '|---|---|---|']
    for command, wall, cpu in times:
        argv = shlex.split(command)
        short = argv[1] + (f' --split-name {argv[argv.index("--split-name") + 1]}'
                           if '--split-name' in argv else '')
        stage_rows.append(f'| `{short}` | {wall:.1f}' + (f' ({wall / 60:.1f} min)' if wall >= 120 else '')
                          + f' | {cpu:.1f} |')
    val_rows = ['| iteration | ' + ' | '.join(str(r['iter']) for r in val) + ' |',
                '|---|' + '---|' * len(val)]
    for key in keys[:3]:
        val_rows.append(f'| val {key.replace("_", " ", 1)} | ' + ' | '.join(
            f'{r[f"coco/{key}"]:.3f}' for r in val) + ' |')
    pack = [t for c, *t in times if 'mscoco_packer.py' in c]
    trained = [t for c, *t in times if 'tools/train.py' in c][0]
    max_iters = val[-1]['iter']
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_raccoon.py --fresh --write` ({datetime.date.today()}): '
        f'`{PAGE}`, section 5, its config block and its {len(commands)} raccoon commands exactly as the page '
        'shows them, in its order, from the repository root: `configs/fcos_effb0_demo.py` with one class, '
        f'{max_iters} iterations of 8 images on the 160 train photos of `../shared/data/raccoon` '
        '(datitran/raccoon_dataset in COCO layout, 178-2000 px), seed 0, deterministic; val = the 40 val '
        'photos. CPU s: user + system time of the command\'s processes (DataLoader workers included).',
        '', markdown_line(before), '', *stage_rows, '',
        f'Packing both splits: {sum(w for w, _ in pack):.1f} s; training: {trained[0] / 60:.1f} minutes '
        f'({trained[1] / 60:.1f} CPU-minutes).', '', *val_rows, '',
        f'`tools/test.py` on `iter_{max_iters}.pth`: bbox mAP **{test["coco/bbox_mAP"]:.3f}** (all six COCO '
        'numbers: ' + ' '.join(f'{test[f"coco/{k}"]:.3f}' for k in keys) + '); the ONNX export evaluated by '
        '`tools/deploy/test_onnx.py`: ' + ' '.join(f'{onnx[f"coco/{k}"]:.3f}' for k in keys) + '.', ''])
    sheet = [shlex.split(c) for c in commands if 'detection_sheet.py' in c][0]
    sheet_out = osp.join(REPO, sheet[sheet.index('--out') + 1])
    if args.write:
        shutil.copyfile(sheet_out, osp.join(REPO, SHEET))
        print(f'{SHEET} <- {osp.relpath(sheet_out, REPO)}')
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
