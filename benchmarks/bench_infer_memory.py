#!/usr/bin/env python
"""Peak memory (RSS) of the inference tools on large photos and on many of them.

    .venv/bin/python benchmarks/bench_infer_memory.py [--side 6000] [--count 100]
        [--config configs/fcos_effb0_demo.py] [--checkpoint CKPT] [--onnx MODEL.onnx] [--tmp DIR]

Makes one synthetic ``side`` x ``side`` JPEG (6000x6000 = 36 MP: gradients, shapes and noise, like a photo
in size and JPEG cost) in a temporary directory, and ``count`` hard links to it (one file on disk; each is
still opened and decoded on its own). Runs ``tools/infer.py`` (PyTorch, DetInferencer, pictures drawn) and
``tools/deploy/onnx_infer.py`` (ONNX Runtime) on 1 and on ``count`` of them, each in a subprocess under
``/usr/bin/time -v``, and prints the peak RSS ("Maximum resident set size") and the wall time of each run
as a Markdown table. Default model: the demo's (``work_dirs/fcos_effb0_demo``: ``iter_600.pth`` and
``onnx/fcos_effb0_demo.onnx``, as ``tools/run_demo.sh`` leaves them); without a checkpoint the demo model
is randomly initialised and saved in the temporary directory (its detections are nonsense, but the memory
is the same); without an ONNX model the ONNX rows are skipped. Everything is written under the temporary
directory, removed at the end; nothing in the repository.
"""
from __future__ import annotations

import argparse
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
    p.add_argument('--config', default=osp.join(REPO, 'configs', 'fcos_effb0_demo.py'))
    p.add_argument('--checkpoint', default=osp.join(DEMO, 'iter_600.pth'))
    p.add_argument('--onnx', default=osp.join(DEMO, 'onnx', 'fcos_effb0_demo.onnx'))
    p.add_argument('--tmp', default=None, help='temporary directory (default: the system one)')
    p.add_argument('--only', choices=['torch', 'onnx'], help='run one of the two tools only')
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix='bench_infer_memory-', dir=args.tmp)
    try:
        one, many = osp.join(tmp, 'one'), osp.join(tmp, 'many')
        os.makedirs(one)
        os.makedirs(many)
        photo = osp.join(one, 'photo.jpg')
        make_photo(photo, args.side)
        for i in range(args.count):
            os.link(photo, osp.join(many, f'photo_{i:03d}.jpg'))
        ckpt = args.checkpoint
        if not osp.isfile(ckpt):
            ckpt = random_checkpoint(args.config, osp.join(tmp, 'random.pth'))
        mb = osp.getsize(photo) / 2**20
        print(f'{args.side}x{args.side} JPEG ({args.side ** 2 / 1e6:.0f} MP, {mb:.1f} MB file; decoded '
              f'{args.side ** 2 * 3 / 2**20:.0f} MB), checkpoint {ckpt}\n')
        print('| tool | images | peak RSS | wall |\n|---|---:|---:|---:|')
        runs = []
        if args.only != 'onnx':
            runs += [('tools/infer.py', d, n, [sys.executable, osp.join(REPO, 'tools', 'infer.py'), d,
                                               args.config, ckpt, '--out-dir', osp.join(tmp, f'out_t{n}'),
                                               '--device', 'cpu'])
                     for d, n in ((one, 1), (many, args.count))]
        if args.only != 'torch' and osp.isfile(args.onnx):
            runs += [('tools/deploy/onnx_infer.py', d, n,
                      [sys.executable, osp.join(REPO, 'tools', 'deploy', 'onnx_infer.py'), args.onnx, d,
                       '--out-dir', osp.join(tmp, f'out_o{n}')]) for d, n in ((one, 1), (many, args.count))]
        for tool, _, n, cmd in runs:
            rss, wall, _ = peak(cmd)
            print(f'| `{tool}` | {n} | {rss / 1024:.2f} GiB | {wall:.0f} s |', flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
