#!/usr/bin/env python
"""Input normalisation 127 vs 128 for the ImageNet EfficientNet-Lite0 weights, measured on the
classifier path against real COCO crops (the configs use 128, the weights were trained with 127).

The TF Lite0 weights were trained on RGB ``(x - 127) / 128`` (tensorflow/tpu
``models/official/efficientnet/lite/efficientnet_lite_builder.py``: ``MEAN_RGB = [127.0, 127.0, 127.0]``,
``STDDEV_RGB = [128.0, 128.0, 128.0]``); the detector configs feed RGB ``(x - 128) / 128``. This script
runs the same ``EffNet('lite0', num_classes=1000)`` with the shipped weights on the same crops under both
and reports how far the two disagree, with two references: a deliberately wrong normalisation (BGR channel
order) as a positive control that shows what an error the measurement *can* see looks like, and the same
TF normalisation on crops resized bilinear instead of bicubic, an arbitrary preprocessing choice, as the
size of a difference that does not matter.

Crops: every non-crowd box of tiny COCO val2017 + train2017 whose short side is at least ``--min-side``
pixels, as a square of side ``max(w, h) / 0.875`` around the box centre (the object fills the frame as
ImageNet's 87.5 % centre crop does; clipped at the image border), resized to 224x224 bicubic as TF's
EfficientNet eval preprocessing does (``preprocessing.py``: ``CROP_FRACTION = 0.875``,
``resize_bicubic``).

    .venv/bin/python benchmarks/bench_normalisation.py [--threads 1] [--min-side 32] [--write]

About 20 s per row on one busy core (channels_last; on this shared 2-core machine one thread was
faster than two: 16 s against 62 s for the 414 crops).

Seeded and deterministic (fixed crop order, bootstrap seed 0). Prints the section of benchmarks/RESULTS.md,
with the machine (CPU, load before and after); ``--write`` puts it there, "Input normalisation"
(commentary below the generated part kept).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import os.path as osp
import time

import numpy as np
import torch
from mmengine.logging import MMLogger
from PIL import Image
from torchvision.models import ResNet18_Weights

import fcos_plugin  # noqa: F401  (registers EffNet)
from fcos_plugin.models.backbones import EffNet

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY = os.environ.get('FCOS_TINY_COCO', osp.join(REPO, '..', 'shared', 'data', 'tiny_coco'))
SIZE = 224  # ARCH_SETTINGS['lite0'] resolution
CROP_FRACTION = 0.875  # TF EfficientNet eval preprocessing: 224 / (224 + 32)
BOOTSTRAP = 10000
SECTION = '## Input normalisation: 127 vs 128'
END_MARK = '<!-- end of bench_normalisation.py output; commentary below is kept by --write -->'

# COCO category -> ImageNet-1k classes that name the same object, as (index, torchvision's name); a
# prediction of any of them counts as correct. Only categories whose objects ImageNet names outright;
# left out on purpose: person, giraffe, skateboard, surfboard, snowboard, frisbee, baseball bat, fork,
# knife, spoon, toothbrush, scissors, suitcase, book, fire hydrant, sandwich, donut, cake (no
# ImageNet class); bird, boat, horse, sheep, cow, chair, bed, oven, wine glass, carrot (ImageNet splits
# them into many fine classes or names only a special case, e.g. sorrel, ox, rocking chair); kite
# (ImageNet's 21 'kite' is the bird of prey). Every index is checked against torchvision's names at start.
COCO_TO_IMAGENET: dict[str, tuple[tuple[int, str], ...]] = {
    'airplane': ((404, 'airliner'), (895, 'warplane')),
    'apple': ((948, 'Granny Smith'),),
    'backpack': ((414, 'backpack'),),
    'banana': ((954, 'banana'),),
    'bear': ((294, 'brown bear'), (295, 'American black bear'), (296, 'ice bear'), (297, 'sloth bear')),
    'bench': ((703, 'park bench'),),
    'bicycle': ((671, 'mountain bike'), (444, 'bicycle-built-for-two')),
    'bottle': ((440, 'beer bottle'), (737, 'pop bottle'), (898, 'water bottle'), (907, 'wine bottle'),
               (720, 'pill bottle')),
    'bowl': ((659, 'mixing bowl'), (809, 'soup bowl')),
    'broccoli': ((937, 'broccoli'),),
    'bus': ((779, 'school bus'), (874, 'trolleybus'), (654, 'minibus')),
    'car': ((436, 'beach wagon'), (468, 'cab'), (511, 'convertible'), (609, 'jeep'), (627, 'limousine'),
            (656, 'minivan'), (661, 'Model T'), (734, 'police van'), (751, 'racer'), (817, 'sports car')),
    'cat': ((281, 'tabby'), (282, 'tiger cat'), (283, 'Persian cat'), (284, 'Siamese cat'),
            (285, 'Egyptian cat')),
    'cell phone': ((487, 'cellular telephone'),),
    'clock': ((409, 'analog clock'), (530, 'digital clock'), (892, 'wall clock')),
    'couch': ((831, 'studio couch'),),
    'cup': ((504, 'coffee mug'), (968, 'cup')),
    # ImageNet's 118 dog breeds are the contiguous block 151 'Chihuahua' .. 268 'Mexican hairless'
    'dog': tuple((i, '') for i in range(151, 269)),
    'dining table': ((532, 'dining table'),),
    'elephant': ((385, 'Indian elephant'), (386, 'African elephant'), (101, 'tusker')),
    'hair drier': ((589, 'hand blower'),),
    'handbag': ((748, 'purse'),),
    'hot dog': ((934, 'hotdog'),),
    'keyboard': ((508, 'computer keyboard'), (878, 'typewriter keyboard'), (810, 'space bar')),
    'laptop': ((620, 'laptop'), (681, 'notebook')),
    'microwave': ((651, 'microwave'),),
    'motorcycle': ((665, 'moped'), (670, 'motor scooter')),
    'mouse': ((673, 'mouse'),),
    'orange': ((950, 'orange'),),
    'parking meter': ((704, 'parking meter'),),
    'pizza': ((963, 'pizza'),),
    'potted plant': ((738, 'pot'),),
    'refrigerator': ((760, 'refrigerator'),),
    'remote': ((761, 'remote control'),),
    'sink': ((896, 'washbasin'),),
    'skis': ((795, 'ski'),),
    'sports ball': ((805, 'soccer ball'), (852, 'tennis ball'), (430, 'basketball'), (429, 'baseball'),
                    (890, 'volleyball'), (574, 'golf ball'), (768, 'rugby ball'), (722, 'ping-pong ball')),
    'stop sign': ((919, 'street sign'),),
    'teddy bear': ((850, 'teddy'),),
    'tennis racket': ((752, 'racket'),),
    'tie': ((906, 'Windsor tie'), (457, 'bow tie')),
    'toaster': ((859, 'toaster'),),
    'toilet': ((861, 'toilet seat'),),
    'traffic light': ((920, 'traffic light'),),
    'train': ((705, 'passenger car'), (547, 'electric locomotive'), (820, 'steam locomotive'),
              (466, 'bullet train'), (829, 'streetcar'), (565, 'freight car')),
    'truck': ((555, 'fire engine'), (569, 'garbage truck'), (675, 'moving van'), (717, 'pickup'),
              (864, 'tow truck'), (867, 'trailer truck')),
    'tv': ((851, 'television'), (664, 'monitor'), (782, 'screen')),
    'umbrella': ((879, 'umbrella'),),
    'vase': ((883, 'vase'),),
    'zebra': ((340, 'zebra'),),
}

# name -> (mean, std, channel order fed to the network, resize kernel); same crops, model and everything
# else. The last two rows are references: a normalisation error that the measurement can see (the
# channel order of mmdet's bgr_to_rgb=False), and an arbitrary preprocessing choice nobody tunes (the
# resize kernel) as the size of a difference that does not matter.
NORMALISATIONS = {
    '(x-127)/128 RGB (TF Lite training)': (127.0, 128.0, 'RGB', 'bicubic'),
    '(x-128)/128 RGB (configs)': (128.0, 128.0, 'RGB', 'bicubic'),
    '(x-128)/128 BGR (control: wrong channel order)': (128.0, 128.0, 'BGR', 'bicubic'),
    '(x-127)/128 RGB, bilinear resize (reference)': (127.0, 128.0, 'RGB', 'bilinear'),
}
A, B, CONTROL, RESIZE = NORMALISATIONS
RESAMPLE = {'bicubic': Image.BICUBIC, 'bilinear': Image.BILINEAR}


def check_mapping() -> dict[str, set[int]]:
    """Indices of COCO_TO_IMAGENET, each name checked against torchvision's ImageNet categories."""
    categories = ResNet18_Weights.IMAGENET1K_V1.meta['categories']
    assert (categories[151], categories[268]) == ('Chihuahua', 'Mexican hairless'), 'dog block moved'
    for coco, classes in COCO_TO_IMAGENET.items():
        for index, name in classes:
            assert not name or categories[index] == name, (coco, index, name, categories[index])
    return {coco: {i for i, _ in classes} for coco, classes in COCO_TO_IMAGENET.items()}


def coco_crops(root: str, min_side: float
               ) -> tuple[dict[str, torch.Tensor], list[str], list[float]]:
    """uint8 RGB crops ``(N, 3, SIZE, SIZE)`` per resize kernel of RESAMPLE, their COCO category names
    and box short sides, in a fixed order (val2017 then train2017, annotation id)."""
    crops, names, sides = {k: [] for k in RESAMPLE}, [], []
    for split in ('val2017', 'train2017'):
        with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
            data = json.load(f)
        category = {c['id']: c['name'] for c in data['categories']}
        files = {i['id']: osp.join(root, split, i['file_name']) for i in data['images']}
        images: dict[int, Image.Image] = {}
        for ann in sorted(data['annotations'], key=lambda a: a['id']):
            x, y, w, h = ann['bbox']
            if ann['iscrowd'] or min(w, h) < min_side:
                continue
            if ann['image_id'] not in images:
                images[ann['image_id']] = Image.open(files[ann['image_id']]).convert('RGB')
            img = images[ann['image_id']]
            half = max(w, h) / CROP_FRACTION / 2
            cx, cy = x + w / 2, y + h / 2
            box = (max(0, round(cx - half)), max(0, round(cy - half)),
                   min(img.width, round(cx + half)), min(img.height, round(cy + half)))
            for kernel, resample in RESAMPLE.items():
                crop = img.crop(box).resize((SIZE, SIZE), resample)
                crops[kernel].append(torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1))
            names.append(category[ann['category_id']])
            sides.append(min(w, h))
    return {k: torch.stack(v) for k, v in crops.items()}, names, sides


def logits_under(model: EffNet, crops: torch.Tensor, mean: float, std: float, order: str,
                 batch: int = 32) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for i in range(0, len(crops), batch):
            x = crops[i:i + batch].float()
            if order == 'BGR':
                x = x.flip(1)
            x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
            out.append(model(x))
    return torch.cat(out).double()


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values`` (paired differences) over BOOTSTRAP resamples."""
    idx = rng.integers(0, len(values), size=(BOOTSTRAP, len(values)))
    means = values[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def label_scores(logits: torch.Tensor, targets: list[set[int]]) -> dict[str, np.ndarray]:
    """Per-crop top-1 / top-5 hit and log-probability of the label (softmax mass on its classes)."""
    prob = logits.softmax(1)
    top5 = logits.topk(5, 1).indices.tolist()
    return dict(
        top1=np.array([row[0] in t for row, t in zip(top5, targets)], dtype=float),
        top5=np.array([bool(set(row) & t) for row, t in zip(top5, targets)], dtype=float),
        logp=np.array([math.log(prob[i, sorted(t)].sum().item()) for i, t in enumerate(targets)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--min-side', type=float, default=32, help='smallest box short side, pixels')
    p.add_argument('--coco', default=TINY)
    p.add_argument('--write', action='store_true', help='update benchmarks/RESULTS.md')
    args = p.parse_args()
    from machine import machine_facts, markdown_line  # benchmarks/machine.py, beside this script
    before = machine_facts()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    t0 = time.perf_counter()

    MMLogger.get_instance('bench_normalisation', log_level='WARNING')  # no per-tensor init log
    mapping = check_mapping()
    crops, names, sides = coco_crops(args.coco, args.min_side)
    model = EffNet('lite0', num_classes=1000,
                   init_cfg=dict(type='Pretrained', checkpoint='efficientnet-lite0'))
    model.init_weights()
    model.eval().to(memory_format=torch.channels_last)
    logits = {k: logits_under(model, crops[kernel], mean, std, order)
              for k, (mean, std, order, kernel) in NORMALISATIONS.items()}
    seconds = time.perf_counter() - t0

    n = len(names)
    print(f'{n} crops (box short side >= {args.min_side:g} px) from {args.coco}; {seconds:.1f} s, '
          f'{args.threads} threads; load average 1/5/15 min at start '
          f'{"/".join(f"{v:.2f}" for v in load_start)}, at end '
          f'{"/".join(f"{v:.2f}" for v in os.getloadavg())}\n')
    top1 = {k: v.argmax(1) for k, v in logits.items()}
    spread = logits[A].std(1).mean().item()

    rng = np.random.default_rng(0)
    subsets = {}  # min side -> (crop indices, categories, scores, paired differences per row)
    for keep in (args.min_side, 96):
        rows = [i for i, (c, s) in enumerate(zip(names, sides)) if c in mapping and s >= keep]
        targets = [mapping[names[i]] for i in rows]
        scores = {k: label_scores(v[rows], targets) for k, v in logits.items()}
        paired = {}
        for k in (B, CONTROL, RESIZE):  # the bootstrap draws in this order, as before: same CIs
            d1 = scores[A]['top1'] - scores[k]['top1']
            dl = scores[A]['logp'] - scores[k]['logp']
            paired[k] = dict(
                only_a=int(((scores[A]['top1'] == 1) & (scores[k]['top1'] == 0)).sum()),
                only_k=int(((scores[A]['top1'] == 0) & (scores[k]['top1'] == 1)).sum()),
                d1=d1.mean(), ci1=bootstrap_ci(d1, rng), dl=dl.mean(), cil=bootstrap_ci(dl, rng))
        subsets[keep] = (rows, sorted({names[i] for i in rows}), scores, paired)

    # Everything below is printed from the numbers above; the merged table is what RESULTS.md shows.
    (rows, cats, scores, paired), (rows96, _, _, paired96) = subsets[args.min_side], subsets[96]
    m, m96 = len(rows), len(rows96)
    table = [f'| input | top-1 agreement with (x-127)/128, {n} crops | mean / max abs logit diff '
             f'| mean top-1 confidence | top-1 / top-5 correct, {m} labelled '
             f'| log p(label) diff (CI), {m} labelled | same, {m96} crops >= 96 px |',
             '|---|---|---|---|---|---|---|']

    def ci(d: dict) -> str:
        return f'{d["dl"]:+.4f} ({d["cil"][0]:+.4f} to {d["cil"][1]:+.4f})'
    for k, v in logits.items():
        agree = int((top1[k] == top1[A]).sum())
        diff = (v - logits[A]).abs()
        conf = v.softmax(1).max(1).values.mean().item()
        k1, k5 = int(scores[k]['top1'].sum()), int(scores[k]['top5'].sum())
        table.append(
            f'| {k} | {agree}/{n}' + ('' if k == A else f' ({agree / n:.1%})')
            + f' | {diff.mean().item():.4g} / {diff.max().item():.3g} | {conf:.4f} '
            f'| {k1} ({k1 / m:.1%}) / {k5} ({k5 / m:.1%}) '
            + ('| - | - |' if k == A else f'| {ci(paired[k])} | {ci(paired96[k])} |'))
    lo1, hi1 = wilson(int(scores[A]['top1'].sum()), m)
    flips = [i for i in range(n) if top1[B][i] != top1[A][i]]
    labelled_flips = [i for i in flips if names[i] in mapping]
    right = [sum(int(top1[k][i]) in mapping[names[i]] for k in (A, B)) for i in labelled_flips]

    def pair(d: dict) -> str:
        return (f'{d["only_a"]} / {d["only_k"]}, {d["d1"]:+.1%} ({d["ci1"][0]:+.1%} to {d["ci1"][1]:+.1%}), '
                f'McNemar p {mcnemar_exact(d["only_a"], d["only_k"]):.2g}')
    notes = '\n'.join([
        f'Logit scale: {spread:.3f}, the standard deviation over the 1000 classes of one crop. Top-1 95 % '
        f'Wilson interval of {int(scores[A]["top1"].sum())}/{m}: {lo1:.1%}-{hi1:.1%}. Top-1 flips between '
        f'127 and 128: {len(flips)} of {n} crops, {len(labelled_flips)} of them labelled (right under both / '
        f'one / neither: {right.count(2)} / {right.count(1)} / {right.count(0)}).', '',
        '| vs (x-127)/128, top-1 of the labelled crops | right only with 127 / only with the row, accuracy '
        f'difference (CI), exact McNemar: {m} crops | same, {m96} crops >= 96 px |', '|---|---|---|',
        *[f'| {k} | {pair(paired[k])} | {pair(paired96[k])} |' for k in (B, CONTROL, RESIZE)]])
    text = '\n'.join([
        SECTION, '',
        f'`.venv/bin/python benchmarks/bench_normalisation.py --threads {args.threads} --write` '
        f'({datetime.date.today()}; {seconds:.0f} s, seeded): `EffNet(\'lite0\', num_classes=1000)` with '
        f'the shipped ImageNet weights on all {n} non-crowd boxes of tiny COCO val2017 + train2017 with a '
        f'short side >= {args.min_side:g} px, each a square context crop of side max(w, h) / {CROP_FRACTION} '
        f'resized bicubic to {SIZE}x{SIZE}, identical for every row except the one thing named. Two '
        'reference rows: BGR input (the error of `bgr_to_rgb=False`, a control that must show up) and the TF '
        'normalisation on bilinear instead of bicubic crops (an arbitrary choice nobody tunes). Labelled '
        f'subset: {m} crops of {len(cats)} COCO categories with an explicit, index-checked ImageNet '
        f'counterpart (`COCO_TO_IMAGENET` in the script); {m96} of them are >= 96 px, near ImageNet\'s '
        "object scale. Log p(label): log of the softmax mass on the label's ImageNet classes; differences "
        f'are (x-127)/128 minus the row, paired, 95 % bootstrap CI ({BOOTSTRAP} resamples, seed 0).',
        '', markdown_line(before), '', *table, '', notes, ''])
    from results_md import publish
    publish(SECTION, text, END_MARK, args.write)


if __name__ == '__main__':
    main()
