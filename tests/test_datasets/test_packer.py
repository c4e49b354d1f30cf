"""COCO -> LMDB packer on the real tiny COCO subset and on corrupted copies of it."""
from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import shutil
import subprocess

import pytest

from fcos_plugin.datasets import PackError, load_packed, pack_coco
from fcos_plugin.datasets.lmdb_format import image_key, seg_key, shared_env

from ..conftest import run_tool

EXPECTED = {'val': (50, 382, 5), 'train': (50, 470, None)}


def _json(root: str, split: str) -> dict:
    with open(osp.join(root, 'annotations', f'instances_{split}2017.json')) as f:
        return json.load(f)


@pytest.mark.parametrize('split', ['val', 'train'])
def test_counts_bytes_and_manifest_equal_the_source(tiny_coco, tiny_coco_packed, split):
    src = _json(tiny_coco, split)
    n_img, n_ann, n_crowd = EXPECTED[split]
    assert (len(src['images']), len(src['annotations'])) == (n_img, n_ann)  # the fixture itself

    packed = load_packed(osp.join(tiny_coco_packed, f'{split}_lmdb'))
    m = packed.manifest
    assert (m['num_images'], m['num_annotations']) == (n_img, n_ann)
    assert m['num_crowd'] == sum(a['iscrowd'] for a in src['annotations'])
    if n_crowd is not None:
        assert m['num_crowd'] == n_crowd
    with open(osp.join(tiny_coco, 'annotations', f'instances_{split}2017.json'), 'rb') as f:
        assert m['source_json_sha256'] == hashlib.sha256(f.read()).hexdigest()
    assert m['num_problems'] == 0
    assert [c['id'] for c in packed.categories] == [c['id'] for c in src['categories']]

    # the COCO view of the pack is the source, record for record (ids, boxes, areas, crowd flags)
    gt = packed.coco_dataset_dict()
    key = lambda a: a['id']  # noqa: E731
    for ours, theirs in zip(sorted(gt['annotations'], key=key), sorted(src['annotations'], key=key)):
        assert {k: ours[k] for k in ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd')} == \
            {k: theirs[k] for k in ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd')}
    assert [im['id'] for im in gt['images']] == [im['id'] for im in src['images']]

    # the process-wide handle: py-lmdb refuses a second open of a path in one process
    with shared_env(osp.join(tiny_coco_packed, f'{split}_lmdb')).begin() as txn:
        for im in src['images']:
            with open(osp.join(tiny_coco, f'{split}2017', im['file_name']), 'rb') as f:
                assert txn.get(image_key(im['file_name'])) == f.read(), im['file_name']
        segs = json.loads(txn.get(seg_key(src['images'][0]['id'])))
    first = [a for a in src['annotations'] if a['image_id'] == src['images'][0]['id']]
    assert segs == [a['segmentation'] for a in first]


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
def _copy_split(tiny_coco: str, dst: str, split: str = 'val') -> dict:
    os.makedirs(osp.join(dst, 'annotations'))
    shutil.copytree(osp.join(tiny_coco, f'{split}2017'), osp.join(dst, f'{split}2017'))
    return _json(tiny_coco, split)


def _write_json(root: str, data, split: str = 'val') -> None:
    with open(osp.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
        json.dump(data, f)


@pytest.fixture
def corrupted(tiny_coco, tmp_path):
    """A copy of tiny_coco val with one instance of every kind of bad input the packer must handle."""
    src = str(tmp_path / 'src')
    data = _copy_split(tiny_coco, src)
    ims, anns = data['images'], data['annotations']
    img_dir = osp.join(src, 'val2017')
    anns_of = lambda im: [a for a in anns if a['image_id'] == im['id']]  # noqa: E731
    bad_images = {}
    os.remove(osp.join(img_dir, ims[0]['file_name']))
    bad_images[ims[0]['id']] = 'missing'
    path = osp.join(img_dir, ims[1]['file_name'])
    raw = open(path, 'rb').read()
    open(path, 'wb').write(raw[:len(raw) // 2])
    bad_images[ims[1]['id']] = 'truncated'
    open(osp.join(img_dir, ims[2]['file_name']), 'wb').write(b'definitely not a JPEG' * 100)
    bad_images[ims[2]['id']] = 'undecodable'
    ims[3]['width'] += 7
    bad_images[ims[3]['id']] = 'size'
    dup = dict(ims[4])
    ims.append(dup)  # duplicate image id: both records are unusable
    bad_images[ims[4]['id']] = 'duplicate id'

    # annotation problems on otherwise good images
    good = [im for im in ims[5:] if anns_of(im)]
    bad_anns = {}
    a = anns_of(good[0])[0]
    a['bbox'][2] = 0.0
    bad_anns[a['id']] = 'empty_bbox'
    a = anns_of(good[1])[0]
    a['bbox'][0] = good[1]['width'] + 50.0
    bad_anns[a['id']] = 'bbox_outside_image'
    a = anns_of(good[2])[0]
    a['category_id'] = 999
    bad_anns[a['id']] = 'unknown_category_id'
    a = anns_of(good[3])[0]
    twin = dict(anns_of(good[4])[0])
    twin['id'] = a['id']
    anns.append(twin)
    bad_anns[a['id']] = 'duplicate_annotation_id'
    _write_json(src, data)
    return src, data, bad_images, bad_anns


def test_bad_input_is_reported_and_good_records_are_packed(corrupted, tmp_path):
    src, data, bad_images, bad_anns = corrupted
    out = str(tmp_path / 'out')
    lines = []
    result = pack_coco(src, out, 'val', progress=False, log=lines.append)

    by_image = {}
    for p in result.problems:
        by_image.setdefault(p.image_id, []).append(p)
    for image_id in bad_images:
        assert image_id in by_image, f'no problem reported for image {image_id} ({bad_images[image_id]})'
    reported_anns = {p.ann_id: p.kind for p in result.problems if p.ann_id is not None}
    for ann_id, kind in bad_anns.items():
        assert reported_anns.get(ann_id) == kind
    # every line names the image and its file
    names = {im['id']: im['file_name'] for im in data['images']}
    for line in lines:
        assert 'image ' in line
    for image_id in bad_images:
        assert any(f'image {image_id} ({names[image_id]})' in line for line in lines)
    kinds = {p.message for p in result.problems if p.image_id in bad_images}
    assert any('missing' in k for k in kinds)
    assert any('decode' in k for k in kinds)
    assert any('JSON says' in k for k in kinds)

    # the report file carries the same problems
    with open(result.report_path) as f:
        report = json.load(f)
    assert len(report['problems']) == len(result.problems)
    assert report['problem_counts']['duplicate_image_id'] == 2

    # good records are all there
    packed = load_packed(result.target)
    ids = set(int(i) for i in packed.columns['image_id'])
    good_ids = {im['id'] for im in data['images']} - set(bad_images)
    assert ids == good_ids
    ann_ids = set(int(i) for i in packed.columns['ann_id'])
    expected_anns = {a['id'] for a in data['annotations']
                     if a['image_id'] in good_ids and a['id'] not in bad_anns}
    assert ann_ids == expected_anns


def test_strict_mode_fails_and_writes_nothing(corrupted, tmp_path):
    src = corrupted[0]
    out = str(tmp_path / 'out')
    proc = subprocess.run(run_tool('tools/datasets/mscoco_packer.py', '--src-data-dir', src,
                                   '--target-data-dir', out, '--split-name', 'val', '--strict',
                                   '--no-progress'), capture_output=True, text=True)
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr
    assert 'strict' in proc.stderr
    assert not osp.exists(out) or os.listdir(out) == []


def test_image_level_problem_alone_is_fatal_in_strict_mode(tiny_coco, tmp_path):
    src = str(tmp_path / 'src')
    data = _copy_split(tiny_coco, src)
    _write_json(src, data)
    os.remove(osp.join(src, 'val2017', data['images'][-1]['file_name']))
    with pytest.raises(PackError, match='strict'):
        pack_coco(src, str(tmp_path / 'out'), 'val', strict=True, progress=False, log=lambda s: None)
    assert os.listdir(tmp_path / 'out') == []


@pytest.mark.parametrize('content, needle', [
    ('{"images": [', 'not valid JSON at line 1'),
    ('[1, 2, 3]', 'expected a COCO object'),
    ('{"images": []}', 'missing or malformed "annotations"'),
])
def test_malformed_json_is_a_clear_error(tiny_coco, tmp_path, content, needle):
    src = str(tmp_path / 'src')
    os.makedirs(osp.join(src, 'annotations'))
    os.makedirs(osp.join(src, 'val2017'))
    with open(osp.join(src, 'annotations', 'instances_val2017.json'), 'w') as f:
        f.write(content)
    proc = subprocess.run(run_tool('tools/datasets/mscoco_packer.py', '--src-data-dir', src,
                                   '--target-data-dir', str(tmp_path / 'out'), '--split-name', 'val',
                                   '--pack-type', 'lmdb'), capture_output=True, text=True)
    assert proc.returncode == 1
    assert needle in proc.stderr and 'instances_val2017.json' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_missing_split_is_a_clear_error(tiny_coco, tmp_path):
    proc = subprocess.run(run_tool('tools/datasets/mscoco_packer.py', '--src-data-dir',
                                   str(tmp_path), '--target-data-dir', str(tmp_path / 'out'),
                                   '--split-name', 'train', '--pack-type', 'lmdb'),
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "split 'train' not found" in proc.stderr and 'Traceback' not in proc.stderr


def test_complete_target_is_not_overwritten_unless_asked(tiny_coco, tmp_path):
    out = str(tmp_path / 'out')
    pack_coco(tiny_coco, out, 'val', progress=False, log=lambda s: None)
    before = os.stat(osp.join(out, 'val_lmdb', 'data.mdb')).st_mtime_ns
    with pytest.raises(PackError, match='already exists'):
        pack_coco(tiny_coco, out, 'val', progress=False, log=lambda s: None)
    assert os.stat(osp.join(out, 'val_lmdb', 'data.mdb')).st_mtime_ns == before
    load_packed(osp.join(out, 'val_lmdb'))
    r = pack_coco(tiny_coco, out, 'val', overwrite=True, progress=False, log=lambda s: None)
    assert load_packed(r.target).manifest['num_images'] == 50
    assert sorted(os.listdir(out)) == ['val_lmdb', 'val_pack_report.json']


def test_map_grows_instead_of_failing(tiny_coco, tmp_path):
    r = pack_coco(tiny_coco, str(tmp_path), 'val', map_size=1 << 20, progress=False,
                  log=lambda s: None)  # 1 MiB map for ~8 MB of images
    packed = load_packed(r.target)
    assert packed.manifest['num_images'] == 50
    assert packed.manifest['image_bytes'] > 4 << 20
