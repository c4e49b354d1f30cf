"""Tests for the synthetic COCO demo dataset and its command-line tool."""
import importlib.util
import json
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from fcos_plugin.datasets.demo_data import (
    DEMO_CATEGORIES,
    DEMO_CLASSES,
    MIN_VISIBLE_FRACTION,
    OBJECTS_PER_IMAGE,
    SPLITS,
    ann_file,
    is_complete,
    make_demo_dataset,
    render_scene,
)

REPO = Path(__file__).resolve().parents[2]
NUM_TRAIN, NUM_VAL = 48, 8


def load_tool():
    spec = importlib.util.spec_from_file_location(
        'make_demo_dataset_tool', REPO / 'tools' / 'datasets' / 'make_demo_dataset.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
            if p.is_file()}


@pytest.fixture(scope='module')
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('demo') / 'demo'
    counts = make_demo_dataset(root, NUM_TRAIN, NUM_VAL, seed=0)
    assert counts['train_images'] == NUM_TRAIN and counts['val_images'] == NUM_VAL
    assert counts['categories'] == len(DEMO_CATEGORIES)
    return root


def load_json(root: Path, split: str) -> dict:
    return json.loads((root / ann_file(split)).read_text())


def test_same_seed_gives_identical_bytes(tmp_path, demo):
    make_demo_dataset(tmp_path / 'a', 5, 2, seed=3)
    make_demo_dataset(tmp_path / 'b', 5, 2, seed=3)
    a, b = tree_bytes(tmp_path / 'a'), tree_bytes(tmp_path / 'b')
    assert len(a) == 2 + 5 + 2
    assert a == b
    # Per-image random streams: the seed-0 images equal the first ones of the fixture's run.
    make_demo_dataset(tmp_path / 'c', 5, 2, seed=0)
    c, full = tree_bytes(tmp_path / 'c'), tree_bytes(demo)
    for name, data in c.items():
        if name.endswith('.jpg'):
            assert full[name] == data, name
    # ... and another seed gives other scenes.
    assert a['train2017/000000000001.jpg'] != c['train2017/000000000001.jpg']


@pytest.mark.parametrize('split', SPLITS)
def test_coco_validity(demo, split):
    coco = COCO(str(demo / ann_file(split)))
    raw = load_json(demo, split)
    valid_ids = {c.id for c in DEMO_CATEGORIES}
    assert sorted(coco.getCatIds()) == sorted(valid_ids)
    assert [c['name'] for c in raw['categories']] == [c.name for c in DEMO_CATEGORIES]
    assert len({a['id'] for a in raw['annotations']}) == len(raw['annotations'])
    assert len({i['id'] for i in raw['images']}) == len(raw['images'])
    for img in raw['images']:
        decoded = cv2.imread(str(demo / split / img['file_name']), cv2.IMREAD_UNCHANGED)
        assert decoded is not None and decoded.shape == (img['height'], img['width'], 3)
        assert 320 <= img['width'] <= 512 and 320 <= img['height'] <= 512
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img['id']))
        assert OBJECTS_PER_IMAGE[0] <= len(anns) <= OBJECTS_PER_IMAGE[1]
        for ann in anns:
            x, y, w, h = ann['bbox']
            assert all(isinstance(v, float) for v in ann['bbox'])
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img['width'] and y + h <= img['height']
            assert ann['category_id'] in valid_ids and ann['iscrowd'] == 0
            # area is the visible mask's pixel count; the visible part lies inside the box.
            assert 0 < ann['area'] <= w * h
            assert mask_utils.area(ann['segmentation']) == ann['area']
            assert coco.annToMask(ann).sum() == ann['area']
            mx, my, mw, mh = mask_utils.toBbox(ann['segmentation'])
            assert mx >= x and my >= y and mx + mw <= x + w and my + mh <= y + h


def test_objects_have_their_class_colour(demo):
    """The pixels an annotation claims show its class colour: catches id/label/drawing mix-ups."""
    colours = {c.id: np.array(c.rgb[::-1], float) for c in DEMO_CATEGORIES}  # BGR like cv2
    coco = COCO(str(demo / ann_file('val2017')))
    checked = 0
    for img in coco.loadImgs(coco.getImgIds()):
        pixels = cv2.imread(str(demo / 'val2017' / img['file_name'])).astype(float)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img['id'])):
            if ann['area'] < 100:
                continue
            # erode so that JPEG ringing at the borders does not dominate
            mask = cv2.erode(coco.annToMask(ann), np.ones((3, 3), np.uint8)).astype(bool)
            if mask.sum() < 30:
                continue
            mean = pixels[mask].mean(axis=0)
            nearest = min(colours, key=lambda k: np.abs(colours[k] - mean).sum())
            assert nearest == ann['category_id'], (img['file_name'], ann['id'], mean)
            assert np.abs(mean - colours[ann['category_id']]).max() < 40
            checked += 1
    assert checked >= 10


def test_class_balance_and_size_range(demo):
    raw = load_json(demo, 'train2017')
    anns = raw['annotations']
    counts = Counter(a['category_id'] for a in anns)
    assert set(counts) == {c.id for c in DEMO_CATEGORIES}
    mean = len(anns) / len(DEMO_CATEGORIES)
    assert all(0.6 * mean <= n <= 1.4 * mean for n in counts.values()), counts
    # From ~12 px to ~half the shorter image side; COCO's small and large area ranges both occur.
    sizes = sorted(max(a['bbox'][2:]) for a in anns)
    sides = {i['id']: min(i['width'], i['height']) for i in raw['images']}
    rel = [max(a['bbox'][2:]) / sides[a['image_id']] for a in anns]
    assert sizes[0] <= 14 and max(rel) >= 0.4 and max(rel) <= 0.5 + 1e-6
    assert sum(a['area'] < 32 ** 2 for a in anns) >= 0.15 * len(anns)
    assert sum(a['area'] > 96 ** 2 for a in anns) >= 0.03 * len(anns)
    # both square and non-square images
    assert any(i['width'] != i['height'] for i in raw['images'])


def test_occlusion_bookkeeping():
    """Visible masks equal a painter's-algorithm label map; occlusion happens but is bounded."""
    occluded = 0
    for seed in range(40):
        image, objects = render_scene(np.random.default_rng(seed))
        h, w = image.shape[:2]
        owner = np.full((h, w), -1)
        for k, obj in enumerate(objects):
            s = obj.full.shape[0]
            owner[obj.y0:obj.y0 + s, obj.x0:obj.x0 + s][obj.full] = k
        for k, obj in enumerate(objects):
            s = obj.full.shape[0]
            np.testing.assert_array_equal(
                obj.visible, obj.full & (owner[obj.y0:obj.y0 + s, obj.x0:obj.x0 + s] == k))
            assert obj.visible.sum() >= MIN_VISIBLE_FRACTION * obj.full_area
            occluded += obj.visible.sum() < obj.full_area
    assert occluded >= 5


def test_tool_refuses_overwrite_and_recovers_from_interruption(tmp_path, capsys):
    tool = load_tool()
    out = tmp_path / 'demo'
    args = ['--out-dir', str(out), '--num-train', '3', '--num-val', '2', '--seed', '1',
            '--no-progress']
    assert tool.main(args) == 0
    assert 'wrote 3 train images' in capsys.readouterr().out
    assert is_complete(out)
    before = tree_bytes(out)

    assert tool.main(args[:-1] + ['--seed', '2', '--no-progress']) == 1
    assert '--force' in capsys.readouterr().err
    assert tree_bytes(out) == before  # untouched

    assert tool.main(args + ['--seed', '2', '--force']) == 0
    assert tree_bytes(out) != before and is_complete(out)

    # A half-written run leaves only the hidden temp dir; the rerun clears it.
    partial = tmp_path / '.demo2.partial'
    (partial / 'train2017').mkdir(parents=True)
    (partial / 'train2017' / 'junk.jpg').write_bytes(b'x')
    assert tool.main(['--out-dir', str(tmp_path / 'demo2'), '--num-train', '1', '--num-val',
                      '1', '--no-progress']) == 0
    assert not partial.exists() and is_complete(tmp_path / 'demo2')
    assert not (tmp_path / 'demo2' / 'train2017' / 'junk.jpg').exists()

    # A non-empty folder that is not a demo dataset is not replaced without --force either.
    other = tmp_path / 'mine'
    other.mkdir()
    (other / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not a complete demo dataset'):
        make_demo_dataset(other, 1, 1)
    assert (other / 'keep.txt').read_text() == 'mine'


def test_mmdet_coco_dataset_reads_it(demo):
    """mmdet's own CocoDataset maps the non-contiguous ids onto labels 0..5 in class order."""
    from mmdet.datasets import CocoDataset

    ds = CocoDataset(data_root=str(demo), ann_file=ann_file('val2017'),
                     data_prefix=dict(img='val2017/'), metainfo=dict(classes=DEMO_CLASSES),
                     pipeline=[], test_mode=True)
    raw = load_json(demo, 'val2017')
    assert len(ds) == NUM_VAL
    label_of = {c.id: k for k, c in enumerate(DEMO_CATEGORIES)}
    for info in (ds.get_data_info(i) for i in range(len(ds))):
        expected = sorted((label_of[a['category_id']], a['bbox'][0])
                          for a in raw['annotations'] if a['image_id'] == info['img_id'])
        got = sorted((inst['bbox_label'], inst['bbox'][0]) for inst in info['instances'])
        assert got == expected
