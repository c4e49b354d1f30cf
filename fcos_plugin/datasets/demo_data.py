"""A built-in, deterministic COCO-format demo dataset of synthetic shapes.

Each image is a textured background (noise, gradient, stripes or checkerboard in muted random
colours) with 1-8 saturated objects from six classes that differ in shape *and* colour. Objects
range from 12 px to half the shorter image side (log-uniform, so small objects are common) and
are drawn in order, later ones over earlier ones; a placement that would leave an earlier object
less than half visible is rejected and retried, and an object that finds no place is not drawn,
so every drawn object is annotated.

Annotation convention (COCO's): ``bbox`` is the tight box of the *full* object (also the
occluded part), always inside the image; ``area`` is the *visible* pixel count and
``segmentation`` the visible mask as compressed RLE (``iscrowd`` 0; RLE rather than polygons
because rings have holes and occlusion splits masks). Category ids are non-contiguous
(1, 2, 3, 5, 7, 9), like COCO's, so id/label mix-ups show.

Every image draws from its own random stream, seeded by ``(seed, split, index)``: the same seed
gives byte-identical files, and a larger ``num_train`` keeps the first images unchanged.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class DemoCategory:
    """One object class: COCO id, name, shape and base colour (RGB)."""

    id: int
    name: str
    shape: str
    rgb: tuple[int, int, int]


DEMO_CATEGORIES: tuple[DemoCategory, ...] = (
    DemoCategory(1, 'red_circle', 'circle', (220, 35, 35)),
    DemoCategory(2, 'green_square', 'square', (35, 185, 55)),
    DemoCategory(3, 'blue_triangle', 'triangle', (40, 75, 235)),
    DemoCategory(5, 'yellow_star', 'star', (245, 215, 25)),
    DemoCategory(7, 'magenta_ring', 'ring', (215, 40, 215)),
    DemoCategory(9, 'cyan_cross', 'cross', (25, 215, 230)),
)
DEMO_CLASSES: tuple[str, ...] = tuple(c.name for c in DEMO_CATEGORIES)

SPLITS = ('train2017', 'val2017')
IMAGE_SIDE_RANGE = (320, 512)  # width and height drawn independently, inclusive
OBJECTS_PER_IMAGE = (1, 8)  # inclusive
MIN_OBJECT_SIZE = 12  # px, side of the object's square canvas
MAX_OBJECT_FRACTION = 0.5  # of the shorter image side
MIN_VISIBLE_FRACTION = 0.5  # an earlier object keeps at least this much of its pixels
PLACEMENT_TRIES = 20
COLOUR_JITTER = 20  # +- per channel around a class colour
BACKGROUND_SATURATION = 0.35  # background colours are pulled this far from grey towards random
PIXEL_NOISE_STD = 3.0
NOISY_BACKGROUND_STD = 10.0  # the 'noise' background kind
BLOTCH_LUMA_STD = 30.0
BLOTCH_CHROMA_STD = 10.0
JPEG_QUALITY = 90
RING_INNER_RATIO = 0.5
STAR_INNER_RATIO = 0.45
CROSS_ARM_RATIO = 1 / 3  # arm thickness / arm span
MAX_TILT_DEG = 30  # squares and crosses; triangles and stars turn freely


def ann_file(split: str) -> str:
    """Annotation path relative to the data root, e.g. ``annotations/instances_val2017.json``."""
    return f'annotations/instances_{split}.json'


# ------------------------------------------------------------------------------------ drawing

def _polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-free polygon of ``shape`` centred at 0, randomly rotated: ``(K, 2)`` float xy."""
    if shape == 'square':
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        angle = math.radians(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG))
    elif shape == 'triangle':
        t = np.deg2rad([90, 210, 330])
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        angle = rng.uniform(0, 2 * math.pi)
    elif shape == 'star':
        t = np.deg2rad(np.arange(10) * 36 + 90)
        r = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
        pts = np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
        angle = rng.uniform(0, 2 * math.pi)
    elif shape == 'cross':
        a, t = 1.0, CROSS_ARM_RATIO
        pts = np.array([[-t, -a], [t, -a], [t, -t], [a, -t], [a, t], [t, t], [t, a], [-t, a],
                        [-t, t], [-a, t], [-a, -t], [-t, -t]], dtype=np.float64)
        angle = math.radians(rng.uniform(-MAX_TILT_DEG, MAX_TILT_DEG))
    else:
        raise ValueError(f'unknown polygon shape {shape!r}')
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def _shape_mask(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``(size, size)`` mask of a shape that spans the canvas in its longer direction."""
    half = size / 2
    if shape in ('circle', 'ring'):
        yy, xx = np.mgrid[:size, :size] + 0.5
        dist = np.hypot(xx - half, yy - half)
        mask = dist <= half
        if shape == 'ring':
            mask &= dist >= half * RING_INNER_RATIO
        return mask
    pts = _polygon(shape, rng)
    pts = pts / np.abs(pts).max() * half + half
    # cv2 puts integer coordinates at pixel centres; 4 fractional bits keep sub-pixel precision.
    pts = np.round((pts - 0.5) * 16).astype(np.int32)
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _muted_colours(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random background colours pulled towards grey: ``(n, 3)`` float RGB."""
    rgb = rng.uniform(0, 255, size=(n, 3))
    grey = rng.uniform(60, 200, size=(n, 1))
    return grey + BACKGROUND_SATURATION * (rgb - grey)


def _background(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Textured background: ``(h, w, 3)`` float32 RGB, and the pixel-noise std for the image."""
    kind = rng.integers(4)
    c0, c1 = _muted_colours(rng, 2).astype(np.float32)
    if kind == 0:  # smooth blotches; strong fine-grain noise is added with the image noise
        # Mostly brightness variation, little hue variation, so blotches stay muted next to
        # the saturated objects.
        coarse = rng.standard_normal(size=(h // 32 + 2, w // 32 + 2, 4), dtype=np.float32)
        coarse = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        blotches = BLOTCH_LUMA_STD * coarse[..., :1] + BLOTCH_CHROMA_STD * coarse[..., 1:]
        return c0 + blotches, NOISY_BACKGROUND_STD
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    theta = rng.uniform(0, math.pi)
    proj = xx * math.cos(theta) + yy * math.sin(theta)
    if kind == 1:  # linear gradient
        t = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    elif kind == 2:  # stripes
        t = np.floor(proj / rng.uniform(4, 24)) % 2
    else:  # checkerboard
        cell = rng.uniform(8, 48)
        t = (np.floor(xx / cell) + np.floor(yy / cell)) % 2
    return c0 + t[..., None] * (c1 - c0), PIXEL_NOISE_STD


@dataclass
class _Placed:
    category: DemoCategory
    x0: int
    y0: int
    full: np.ndarray  # (S, S) bool, the object's canvas at (x0, y0)
    visible: np.ndarray  # (S, S) bool, shrinks as later objects cover it
    full_area: int


def _overlap(a: _Placed, bx: int, by: int, bsize: int):
    """Slices of ``a``'s canvas and of a canvas at ``(bx, by)`` that cover the same pixels."""
    x0, y0 = max(a.x0, bx), max(a.y0, by)
    x1 = min(a.x0 + a.full.shape[1], bx + bsize)
    y1 = min(a.y0 + a.full.shape[0], by + bsize)
    if x0 >= x1 or y0 >= y1:
        return None
    sa = (slice(y0 - a.y0, y1 - a.y0), slice(x0 - a.x0, x1 - a.x0))
    sb = (slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx))
    return sa, sb


def render_scene(rng: np.random.Generator) -> tuple[np.ndarray, list[_Placed]]:
    """Draw one scene.

    Returns:
        tuple: ``(image, objects)``; ``image`` is ``(H, W, 3)`` uint8 **BGR** (for cv2), objects
        are in drawing order (later ones on top).
    """
    w = int(rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1))
    h = int(rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1))
    image, noise_std = _background(h, w, rng)
    placed: list[_Placed] = []
    max_size = MAX_OBJECT_FRACTION * min(h, w)
    for _ in range(int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))):
        category = DEMO_CATEGORIES[int(rng.integers(len(DEMO_CATEGORIES)))]
        size = int(round(math.exp(rng.uniform(math.log(MIN_OBJECT_SIZE), math.log(max_size)))))
        mask = _shape_mask(category.shape, size, rng)
        colour = np.clip(np.array(category.rgb) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1,
                                                               size=3), 0, 255)
        for _try in range(PLACEMENT_TRIES):
            x0 = int(rng.integers(0, w - size + 1))
            y0 = int(rng.integers(0, h - size + 1))
            hits = []
            for other in placed:
                ov = _overlap(other, x0, y0, size)
                if ov is None:
                    continue
                covered = other.visible[ov[0]] & mask[ov[1]]
                remaining = other.visible.sum() - covered.sum()
                if remaining < MIN_VISIBLE_FRACTION * other.full_area:
                    break
                hits.append((other, ov))
            else:
                for other, (sa, sb) in hits:
                    other.visible[sa] &= ~mask[sb]
                image[y0:y0 + size, x0:x0 + size][mask] = colour
                placed.append(_Placed(category, x0, y0, mask, mask.copy(), int(mask.sum())))
                break
    image += noise_std * rng.standard_normal(size=image.shape, dtype=np.float32)
    bgr = np.clip(np.round(image), 0, 255).astype(np.uint8)[..., ::-1]
    return np.ascontiguousarray(bgr), placed


def _annotation(obj: _Placed, h: int, w: int) -> dict:
    """COCO fields of one object (everything but the ids)."""
    rows = np.flatnonzero(obj.full.any(axis=1))
    cols = np.flatnonzero(obj.full.any(axis=0))
    bbox = [float(obj.x0 + cols[0]), float(obj.y0 + rows[0]),
            float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
    visible = np.zeros((h, w), np.uint8, order='F')
    size = obj.full.shape[0]
    visible[obj.y0:obj.y0 + size, obj.x0:obj.x0 + size] = obj.visible
    rle = mask_utils.encode(visible)
    rle['counts'] = rle['counts'].decode('ascii')
    return dict(category_id=obj.category.id, bbox=bbox, area=float(obj.visible.sum()),
                iscrowd=0, segmentation=rle)


def _encode_jpeg(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.jpg', bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError('cv2.imencode failed to encode a demo image as JPEG')
    return buf.tobytes()


# ---------------------------------------------------------------------------------- dataset

def _write_split(root: Path, split: str, split_code: int, num_images: int, seed: int,
                 progress) -> dict:
    img_dir = root / split
    img_dir.mkdir(parents=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, split_code, index]))
        bgr, objects = render_scene(rng)
        h, w = bgr.shape[:2]
        image_id = index + 1
        file_name = f'{image_id:012d}.jpg'
        (img_dir / file_name).write_bytes(_encode_jpeg(bgr))
        images.append(dict(id=image_id, file_name=file_name, width=w, height=h))
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=image_id,
                                    **_annotation(obj, h, w)))
        if progress is not None:
            progress.update(1)
    coco = dict(
        info=dict(description='fcos_plugin synthetic shapes demo dataset', version='1.0',
                  split=split, seed=seed),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[dict(id=c.id, name=c.name, supercategory='shape')
                    for c in DEMO_CATEGORIES],
    )
    with open(root / ann_file(split), 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    return dict(images=len(images), annotations=len(annotations))


def is_complete(out_dir: os.PathLike) -> bool:
    """Whether ``out_dir`` holds both annotation files and image folders (i.e. a finished run)."""
    out = Path(out_dir)
    return all((out / ann_file(s)).is_file() and (out / s).is_dir() for s in SPLITS)


def make_demo_dataset(out_dir: os.PathLike, num_train: int = 300, num_val: int = 60,
                      seed: int = 0, *, force: bool = False,
                      show_progress: bool = False) -> dict[str, int]:
    """Write the demo dataset in COCO's layout and return counts.

    ``out_dir/annotations/instances_{train,val}2017.json`` and ``out_dir/{train,val}2017/*.jpg``
    are written into ``<parent>/.<name>.partial`` and renamed into place at the end, so an
    interrupted run leaves ``out_dir`` untouched and can simply be rerun.

    Args:
        out_dir: Dataset root.
        num_train: Number of training images.
        num_val: Number of validation images.
        seed: Random seed; equal seeds give byte-identical files.
        force: Replace an existing ``out_dir``. Without it an existing, non-empty ``out_dir``
            raises :class:`FileExistsError`.
        show_progress: Show a tqdm progress bar.

    Returns:
        dict: ``train_images``, ``train_annotations``, ``val_images``, ``val_annotations``,
        ``categories``.
    """
    out = Path(out_dir)
    if num_train < 0 or num_val < 0:
        raise ValueError(f'num_train and num_val must be >= 0, got {num_train}, {num_val}')
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        what = ('already holds a complete demo dataset' if is_complete(out)
                else 'exists and is not empty (and is not a complete demo dataset)')
        raise FileExistsError(f'{out} {what}; pass --force (force=True) to replace it')

    tmp = out.parent / f'.{out.name}.partial'
    if tmp.exists():  # left over from an interrupted run
        shutil.rmtree(tmp)
    (tmp / 'annotations').mkdir(parents=True)
    progress = None
    if show_progress:
        from tqdm import tqdm
        progress = tqdm(total=num_train + num_val, desc='demo images', unit='img')
    try:
        counts = {}
        for split_code, (split, n) in enumerate(zip(SPLITS, (num_train, num_val))):
            c = _write_split(tmp, split, split_code, n, seed, progress)
            key = split[:-len('2017')]
            counts[f'{key}_images'] = c['images']
            counts[f'{key}_annotations'] = c['annotations']
    finally:
        if progress is not None:
            progress.close()
    counts['categories'] = len(DEMO_CATEGORIES)

    if out.exists():
        # Move the old tree aside first so that ``out`` is never missing a complete dataset
        # for longer than two renames.
        old = out.parent / f'.{out.name}.old'
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    else:
        os.replace(tmp, out)
    return counts


__all__ = ['DEMO_CATEGORIES', 'DEMO_CLASSES', 'DemoCategory', 'is_complete',
           'make_demo_dataset', 'render_scene']
