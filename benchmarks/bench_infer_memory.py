#!/usr/bin/env python
"""Peak memory (RSS) of the inference tools on large photos and on many of them.

    .venv/bin/python benchmarks/bench_infer_memory.py [--side 6000] [--count 100] [--small 64]
        [--config configs/fcos_effb0_demo.py] [--checkpoint CKPT] [--onnx MODEL.onnx] [--tmp DIR] [--write]

Makes one synthetic ``side`` x ``side`` JPEG (6000x6000 = 36 MP: gradients, shapes and noise, like a photo
in size and JPEG cost) in a temporary directory, and ``count`` hard links to it (one file on disk; each is
still opened and decoded on its own). Runs ``tools/infer.py`` (PyTorch, DetInferencer, pictures drawn) and
``tools/deploy/onnx_infer.py`` (ONNX Runtime) on one ``small`` x ``small`` JPEG (the tool's own cost), on
one large one and on ``count`` of them, each in a subprocess under ``/usr/bin/time -v``, and prints the peak
RSS ("Maximum resident set size") and the wall time of each run as Markdown tables with the machine (CPU,
load before and after); ``--write`` puts them into benchmarks/RESULTS.md, "Inference memory on large photos"
(commentary below the generated part kept), the table docs/en/faq.md quotes. Default model: the demo's
(``work_dirs/fcos_effb0_demo``: ``iter_600.pth`` and ``onnx/fcos_effb0_demo.onnx``, as ``tools/run_demo.sh``
leaves them); without a checkpoint the demo model is randomly initialised and saved in the temporary
directory (its detections are nonsense, but the memory is the same); without an ONNX model the ONNX rows are
skipped. Everything is written under the temporary directory, removed at the end; nothing in the repository.
"""
from __future__ import annotations

import argparse
import datetime
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'work_dirs', 'fcos_effb0_demo')
SECTION = '## Inference memory on large photos'
END_MARK = '<!-- end of bench_infer_memory.py output; commentary below is kept by --write -->'


def make_photo(path: str, side: int) -> None:
    """A synthetic ``side`` x ``side`` colour JPEG: smooth gradients, filled shapes and noise."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    img = np.empty((side, side, 3), np.uint8)
    img[..., 0] = ramp[None, :]
    img[..., 1] = ramp[:, None]
    img[..., 2] = 128
    for _ in range(40):
        x, y = rng.integers(0, side, 2)
        r = int(rng.integers(side // 40, side // 8))
        cv2.circle(img, (int(x), int(y)), r, tuple(int(c) for c in rng.integers(0, 255, 3)), -1)
    img += rng.integers(0, 12, img.shape, np.uint8)  # sensor-like noise: a photo-sized JPEG
    cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def random_checkpoint(config: str, path: str) -> str:
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    from fcos_plugin.datasets.demo_data import DEMO_CLASSES
    init_default_scope('mmdet')
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    torch.save(dict(meta=dict(dataset_meta=dict(classes=DEMO_CLASSES)), state_dict=model.state_dict()), path)
    return path


def peak(cmd: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MiB, wall seconds, exit status) of ``cmd`` under /usr/bin/time -v."""
    start = time.monotonic()
    proc = subprocess.run(['/usr/bin/time', '-v', *cmd], capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - start
    m = re.search(r'Maximum resident set size \(kbytes\): (\d+)', proc.stderr)
    if m is None or proc.returncode != 0:
        sys.exit(f'{" ".join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}')
    return int(m.group(1)) / 1024, wall, proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--side', type=int, default=6000, help='image side in pixels (6000: 36 MP)')
    p.add_argument('--count', type=int, default=100, help='images in the "many" runs')
    p.add_argument('--small', type=int, default=64, help="side of the small image (the tools' own cost)")
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    p.add_argument('--config', default=osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    p.add_argument('--checkpoint', default=osp.join(DEMO, 'iter_600.pth'))
    p.add_argument('--onnx', default=osp.join(DEMO, 'onnx', 'fcos_effb0_demo.onnx'))
    p.add_argument('--tmp', default=None, help='temporary directory (default: the system one)')
    p.add_argument('--only', choices=['torch', 'onnx'], help='run one of the two tools only')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    tmp = tempfile.mkdtemp(prefix='bench_infer_memory-', dir=args.tmp)
    try:
        small, one, many = osp.join(tmp, 'small'), osp.join(tmp, 'one'), osp.join(tmp, 'many')
        for d in (small, one, many):
            os.makedirs(d)
        make_photo(osp.join(small, 'photo.jpg'), args.small)
        photo = osp.join(one, 'photo.jpg')
        make_photo(photo, args.side)
        for i in range(args.count):
            os.link(photo, osp.join(many, f'photo_{i:03d}.jpg'))
        ckpt = args.checkpoint
        if not osp.isfile(ckpt):
            ckpt = random_checkpoint(args.config, osp.join(tmp, 'random.pth'))
        mb = osp.getsize(photo) / 2**20
        mp = f'{args.side ** 2 / 1e6:.0f} MP'
        cases = ((small, f'one {args.small}x{args.small} image'), (one, f'one {mp} image'),
                 (many, f'{args.count} images of {mp}'))
        tools = {}
        if args.only != 'onnx':
            tools['tools/infer.py'] = lambda d, n: [
                sys.executable, osp.join(REPO, 'tools', 'infer.py'), d, args.config, ckpt,
                '--out-dir', osp.join(tmp, f'out_t{n}'), '--device', 'cpu']
        if args.only != 'torch' and osp.isfile(args.onnx):
            tools['tools/deploy/onnx_infer.py'] = lambda d, n: [
                sys.executable, osp.join(REPO, 'tools', 'deploy', 'onnx_infer.py'), args.onnx, d,
                '--out-dir', osp.join(tmp, f'out_o{n}')]
        results = {}
        for tool, command in tools.items():
            for n, (d, label) in enumerate(cases):
                rss, wall, _ = peak(command(d, n))
                results[tool, label] = (rss, wall)
                print(f'{tool}, {label}: {rss / 1024:.2f} GiB, {wall:.0f} s', flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    header = '| tool | ' + ' | '.join(label for _, label in cases) + ' |'
    align = '|---|' + '---:|' * len(cases)
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_infer_memory.py --side {args.side} --count {args.count} '
        f'--small {args.small} --checkpoint {osp.relpath(osp.abspath(ckpt), REPO)} --onnx '
        f'{osp.relpath(osp.abspath(args.onnx), REPO)} --write` ({datetime.date.today()}): synthetic JPEGs '
        f'({args.side}x{args.side}: {mb:.1f} MB file, {args.side ** 2 * 3 / 2**20:.0f} MB decoded; the '
        f'{args.count} are hard links to one file, each opened and decoded on its own), CPU, the demo model; '
        'each run a fresh process under `/usr/bin/time -v`.', '', markdown_line(before), '',
        'Peak RSS:', '', header, align,
        *[f'| `{tool}` | ' + ' | '.join(f'{results[tool, label][0] / 1024:.2f} GiB' for _, label in cases)
          + ' |' for tool in tools], '', 'Wall time:', '', header, align,
        *[f'| `{tool}` | ' + ' | '.join(f'{results[tool, label][1]:.0f} s' for _, label in cases) + ' |'
          for tool in tools], ''])
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
