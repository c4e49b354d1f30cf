"""The packer's per-record checks that a user's own data trips over: EXIF-rotated photos (sized and checked as
training decodes them), file names that lead outside the source directory, one file named by two records.
Real packing of copies of the real tiny COCO subset; images decoded by mmcv / mmdet's LoadImageFromFile."""
from __future__ import annotations

import io
import json
import os
import os.path as osp
import shutil
import subprocess

import mmcv
import numpy as np
import pytest
from PIL import Image

from fcos_plugin.datasets import PackError, load_packed, pack_coco
from fcos_plugin.datasets.coco_packer import decoded_size, summarize
from fcos_plugin.datasets.pack_verify import verify_pack

from ..conftest import run_tool

quiet = dict(progress=False, log=lambda s: None)


def _copy_val(tiny_coco: str, dst: str) -> dict:
    os.makedirs(osp.join(dst, 'annotations'))
    shutil.copytree(osp.join(tiny_coco, 'val2017'), osp.join(dst, 'val2017'))
    with open(osp.join(tiny_coco, 'annotations', 'instances_val2017.json')) as f:
        return json.load(f)


def _write_json(root: str, data: dict) -> None:
    with open(osp.join(root, 'annotations', 'instances_val2017.json'), 'w') as f:
        json.dump(data, f)


def _anns_of(data: dict, image_id: int) -> list[dict]:
    return [a for a in data['annotations'] if a['image_id'] == image_id]


def _report(result) -> dict:
    with open(result.report_path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# EXIF orientation
# ------------------------------------------------------------------------------------------------
def _with_orientation(img: Image.Image, orientation: int, fmt: str = 'JPEG') -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, fmt, exif=exif, **({'quality': 95} if fmt == 'JPEG' else {}))
    return buf.getvalue()


@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'WEBP'])
@pytest.mark.parametrize('orientation', range(1, 9))
def test_decoded_size_is_what_mmcv_and_load_image_from_file_decode(tmp_path, fmt, orientation):
    """Guards sizing in the training frame: for every EXIF orientation, in JPEG and in the formats where
    cv2's support depends on its version, the packer's decoded size is the shape mmcv.imfrombytes
    (default cv2 backend) and mmcv's LoadImageFromFile give, and an orientation is reported exactly when
    it changes what training sees (the packer used the stored size: orientations 5-8 failed in JPEG)."""
    from mmcv.transforms import LoadImageFromFile
    stored = np.zeros((20, 40, 3), np.uint8)  # 40 wide, 20 high, asymmetric so every flip shows
    stored[:5, :10] = 255
    data = _with_orientation(Image.fromarray(stored), orientation, fmt)
    size = decoded_size(data)
    assert size.stored == (40, 20)
    decoded = mmcv.imfrombytes(data)
    assert size.decoded == (decoded.shape[1], decoded.shape[0])
    path = str(tmp_path / f'img.{fmt.lower()}')
    with open(path, 'wb') as f:
        f.write(data)
    loaded = LoadImageFromFile()(dict(img_path=path))
    assert loaded['ori_shape'] == decoded.shape[:2] == (size.decoded[1], size.decoded[0])
    as_stored = mmcv.imfrombytes(data, flag='color_ignore_orientation')
    changed = as_stored.shape != decoded.shape or not np.array_equal(as_stored, decoded)
    assert (size.orientation != 1) == changed
    if fmt == 'JPEG':  # cv2 always honours it there
        assert size.orientation == orientation


@pytest.fixture
def rotated_photos(tiny_coco, tmp_path):
    """tiny_coco val with two real photos re-saved with EXIF orientation 6 (stored 640x427 and 352x230,
    displayed rotated 90 degrees clockwise), a red square painted on the first. The first record is
    rewritten in the displayed frame (what annotation tools write for phone photos), its one box around
    the red square; the second keeps its raw-frame size and boxes."""
    src = str(tmp_path / 'src')
    data = _copy_val(tiny_coco, src)
    good, raw = data['images'][0], data['images'][1]
    for im in (good, raw):
        path = osp.join(src, 'val2017', im['file_name'])
        with Image.open(path) as img:
            img = img.convert('RGB')
            if im is good:
                img.paste((255, 0, 0), (100, 50, 200, 150))  # stored-frame box [100, 50, 100, 100]
            data_bytes = _with_orientation(img, 6)
        with open(path, 'wb') as f:
            f.write(data_bytes)
    W, H = good['width'], good['height']
    good['width'], good['height'] = H, W
    # orientation 6 shows the stored image turned 90 degrees clockwise: stored (x, y) -> (H - y, x)
    box = [H - (50 + 100), 100, 100, 100]
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] != good['id']]
    data['annotations'].append(dict(id=10 ** 9, image_id=good['id'], category_id=data['categories'][0]['id'],
                                    bbox=box, area=100.0 * 100, iscrowd=0))
    _write_json(src, data)
    return src, data, good, raw, box


def test_exif_rotated_photo_is_packed_in_the_frame_training_sees(rotated_photos, tmp_path):
    """Guards the EXIF fix end to end: a photo stored 640x427 with orientation 6 and its record in the
    displayed frame (427x640) is packed, and the pipeline (LoadImageFromFile on the lmdb:// bytes, as
    training reads them) gives an image of the record's size with the box on the red square; a record in
    the raw frame is a named ``exif_rotated_size`` problem (was: the first rejected as a size mismatch,
    the second packed with boxes that miss the object); both are listed as EXIF-oriented in the report
    and the summary, and verify_pack accepts the pack."""
    from mmengine.registry import init_default_scope

    import fcos_plugin  # noqa: F401
    from fcos_plugin.datasets import LmdbCocoDataset
    src, data, good, raw, box = rotated_photos
    lines = []
    result = pack_coco(src, str(tmp_path / 'out'), 'val', progress=False, log=lines.append)

    assert [(p.kind, p.image_id) for p in result.problems] == [('exif_rotated_size', raw['id'])]
    p = result.problems[0]
    assert p.file_name == raw['file_name']
    assert 'EXIF orientation 6 rotates it to 230x352' in p.message
    assert "JSON's width/height must be the displayed size 230x352" in p.message
    assert any(line.startswith(f'image {raw["id"]} ({raw["file_name"]}): image is stored as 352x230')
               for line in lines)
    assert f'skipped with its {len(_anns_of(data, raw["id"]))} annotation(s)' in p.action

    report = _report(result)
    assert report['problem_counts'] == {'exif_rotated_size': 1}
    assert report['exif_oriented'] == [
        dict(image_id=good['id'], file_name=good['file_name'], orientation=6, stored_size=[640, 427],
             decoded_size=[427, 640], packed=True),
        dict(image_id=raw['id'], file_name=raw['file_name'], orientation=6, stored_size=[352, 230],
             decoded_size=[230, 352], packed=False)]
    summary = list(summarize(result))
    assert any('2 image(s) carry an EXIF orientation (1 packed)' in s and 'exif_oriented' in s
               for s in summary)
    assert verify_pack(result.target, progress=False).ok

    init_default_scope('mmdet')
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True)]
    ds = LmdbCocoDataset(data_root=str(tmp_path / 'out'), ann_file='val_lmdb', test_mode=True,
                         pipeline=pipeline)
    ids = [ds.get_data_info(i)['img_id'] for i in range(len(ds))]
    assert raw['id'] not in ids
    sample = ds[ids.index(good['id'])]
    assert sample['ori_shape'] == sample['img'].shape[:2] == (good['height'], good['width']) == (640, 427)
    x1, y1, x2, y2 = (int(v) for v in np.asarray(sample['gt_bboxes'].tensor)[0])
    assert [x1, y1, x2 - x1, y2 - y1] == box
    inside = sample['img'][y1 + 5:y2 - 5, x1 + 5:x2 - 5].reshape(-1, 3).mean(0)  # BGR
    assert inside[2] > 200 and inside[0] < 60 and inside[1] < 60, inside


def test_exif_raw_frame_record_is_fatal_in_strict_mode(rotated_photos, tmp_path):
    """With the raw-frame record as the only flaw, --strict stops the pack (was: packed without a word)."""
    src, data, good, raw, box = rotated_photos
    data['images'].remove(good)
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] != good['id']]
    _write_json(src, data)
    with pytest.raises(PackError, match='1 problem.*strict'):
        pack_coco(src, str(tmp_path / 'out'), 'val', strict=True, **quiet)
    assert os.listdir(tmp_path / 'out') == []


# ------------------------------------------------------------------------------------------------
# file names outside the source directory
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def outside_paths(tiny_coco, tmp_path):
    """tiny_coco val under tmp/data/src with four records whose files lie outside it: '../../secret.jpg',
    an absolute path, a symlink in val2017 that points out, and '../../../...' to a FIFO (which blocks
    whoever opens it for reading, so a packer that opens it hangs)."""
    root = tmp_path / 'data'
    src = str(root / 'src')
    data = _copy_val(tiny_coco, src)
    ims = data['images']
    moved = []
    for im, name in zip(ims[:3], ('secret.jpg', 'elsewhere.jpg', 'linked.jpg')):
        moved.append(str(root / name))  # the record's own photo, moved out of the source directory
        shutil.move(osp.join(src, 'val2017', im['file_name']), moved[-1])
    os.symlink(moved[2], osp.join(src, 'val2017', 'link_out.jpg'))
    fifo = str(tmp_path / 'fifo.jpg')
    os.mkfifo(fifo)
    os.remove(osp.join(src, 'val2017', ims[3]['file_name']))
    outside = {ims[0]['id']: '../../secret.jpg', ims[1]['id']: moved[1], ims[2]['id']: 'link_out.jpg',
               ims[3]['id']: '../' * 12 + fifo.lstrip('/')}
    for im in ims[:4]:
        im['file_name'] = outside[im['id']]
    _write_json(src, data)
    return src, data, outside, fifo


def _pack_cli(src, out, *flags, timeout=90):
    return subprocess.run(run_tool('tools/datasets/mscoco_packer.py', '--src-data-dir', src,
                                   '--target-data-dir', out, '--split-name', 'val', '--no-progress',
                                   *flags), capture_output=True, text=True, timeout=timeout)


def test_file_names_outside_the_source_directory_are_refused(outside_paths, tmp_path):
    """Guards the containment check: '..', absolute and symlinked-out file names are named problems
    (``file_outside_src``, per record, with the resolved path and the option that allows them) and are never
    opened (the FIFO would hang the packer); every other record is packed; --strict makes them fatal.
    Was: all packed from outside --src-data-dir without a word, and the FIFO opened."""
    src, data, outside, fifo = outside_paths
    out = str(tmp_path / 'out')
    proc = _pack_cli(src, out)
    assert proc.returncode == 0, proc.stderr
    assert 'Traceback' not in proc.stderr
    with open(osp.join(out, 'val_pack_report.json')) as f:
        report = json.load(f)
    problems = {p['image_id']: p for p in report['problems']}
    assert set(problems) == set(outside)
    assert {p['kind'] for p in problems.values()} == {'file_outside_src'}
    for image_id, name in outside.items():
        assert f'image {image_id} ({name}): the file name leads outside the source directory' in proc.stderr
        assert '--allow-outside-src' in problems[image_id]['message']
    fifo_id = data['images'][3]['id']
    assert f'(to {osp.realpath(fifo)}, outside {src});' in problems[fifo_id]['message']
    packed = load_packed(osp.join(out, 'val_lmdb'))
    kept = {im['id'] for im in data['images']} - set(outside)
    assert set(int(i) for i in packed.columns['image_id']) == kept
    assert set(int(i) for i in packed.columns['ann_id']) == {
        a['id'] for a in data['annotations'] if a['image_id'] not in outside}

    strict = _pack_cli(src, str(tmp_path / 'strict'), '--strict')
    assert strict.returncode == 1 and 'strict' in strict.stderr and 'Traceback' not in strict.stderr
    assert not osp.exists(tmp_path / 'strict' / 'val_lmdb')


def test_allow_outside_src_packs_them(outside_paths, tmp_path):
    """--allow-outside-src packs the outside files (the FIFO record dropped from the JSON first)."""
    src, data, outside, fifo = outside_paths
    fifo_id = data['images'].pop(3)['id']
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] != fifo_id]
    _write_json(src, data)
    out = str(tmp_path / 'out')
    proc = _pack_cli(src, out, '--allow-outside-src')
    assert proc.returncode == 0, proc.stderr
    assert 'no problems found' in proc.stdout
    packed = load_packed(osp.join(out, 'val_lmdb'))
    assert set(int(i) for i in packed.columns['image_id']) == {im['id'] for im in data['images']}


def test_symlinked_image_directory_is_inside(tiny_coco, tmp_path):
    """An image directory that is itself a symlink elsewhere (``val2017 -> /datasets/coco/val2017``, common)
    is the source: nothing in it is refused."""
    src = str(tmp_path / 'src')
    os.makedirs(osp.join(src, 'annotations'))
    shutil.copy(osp.join(tiny_coco, 'annotations', 'instances_val2017.json'), osp.join(src, 'annotations'))
    os.symlink(osp.join(tiny_coco, 'val2017'), osp.join(src, 'val2017'))
    result = pack_coco(src, str(tmp_path / 'out'), 'val', **quiet)
    assert result.problems == [] and result.num_images == 50


# ------------------------------------------------------------------------------------------------
# one file, several records
# ------------------------------------------------------------------------------------------------
def test_file_named_twice_keeps_the_first_record(tiny_coco, tmp_path):
    """Guards the duplicate-file rule: of the records naming one file (literally, or as './name'), the first
    is packed with all its annotations and each later one is a ``duplicate_file_name`` problem naming both
    image ids; --strict makes it fatal. Was: every record of that file dropped, the first one included."""
    src = str(tmp_path / 'src')
    data = _copy_val(tiny_coco, src)
    first, other = data['images'][0], data['images'][1]
    assert _anns_of(data, first['id'])
    later = [dict(first, id=9_000_001), dict(other, id=9_000_002, file_name='./' + other['file_name'])]
    data['images'] += later
    next_id = max(a['id'] for a in data['annotations']) + 1
    for i, im in enumerate(later):
        data['annotations'].append(dict(id=next_id + i, image_id=im['id'], category_id=1,
                                        bbox=[1, 1, 10, 10], area=100.0, iscrowd=0))
    _write_json(src, data)
    lines = []
    result = pack_coco(src, str(tmp_path / 'out'), 'val', progress=False, log=lines.append)

    assert sorted((p.kind, p.image_id) for p in result.problems) == [
        ('duplicate_file_name', 9_000_001), ('duplicate_file_name', 9_000_002)]
    by_id = {p.image_id: p for p in result.problems}
    assert f'the same file as image {first["id"]}, which is kept' in by_id[9_000_001].message
    assert f'the same file as image {other["id"]} ({other["file_name"]}), which is kept' in \
        by_id[9_000_002].message
    assert any(line.startswith(f'image 9000001 ({first["file_name"]}): the same file as image {first["id"]}')
               for line in lines)
    packed = load_packed(result.target)
    ids = set(int(i) for i in packed.columns['image_id'])
    assert ids == {im['id'] for im in data['images']} - {9_000_001, 9_000_002}
    assert set(int(i) for i in packed.columns['ann_id']) == {
        a['id'] for a in data['annotations'] if a['image_id'] in ids}

    with pytest.raises(PackError, match='strict'):
        pack_coco(src, str(tmp_path / 'strict'), 'val', strict=True, **quiet)
