"""Pack integrity (issue 9 item 1): per-record CRC32 checked on every read, in the main process and in
DataLoader workers; ``tools/datasets/verify_pack.py``; a truncated ``data.mdb`` named before it is mapped
(never SIGBUS) by the dataset, ``browse_dataset.py`` and ``tools/test.py``; format version 1 packs still open,
with a note. Real lmdb, real packs of the tiny COCO subset and the demo data, real processes; no mocks."""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
import shutil
import subprocess
import sys
import time
import zlib

import lmdb
import mmcv
import pytest
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from torch.utils.data import DataLoader

import fcos_plugin  # noqa: F401
from fcos_plugin.datasets import DamagedPackError, LmdbCocoDataset, LmdbImageBackend, load_packed
from fcos_plugin.datasets.lmdb_format import (
    FORMAT_VERSION,
    INDEX_KEY,
    MANIFEST_KEY,
    checksum_key,
    image_key,
    image_uri,
    is_checksum_key,
    seg_key,
    shared_env,
)
from fcos_plugin.datasets.pack_verify import summarize, verify_pack

from ..conftest import REPO, run_tool

init_default_scope('mmdet')

TEST_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
DAMAGED_ROW = 7  # of tiny_coco val: in the second batch of 4, i.e. read by the second DataLoader worker
SIGBUS_CODES = (-7, 135)  # the fault: killed by SIGBUS (as a child, as a shell reports it)
R18_CFG = osp.join(REPO, 'tests', 'configs', 'fcos_r18_epochs.py')


def _copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def _writable(pack: str) -> lmdb.Environment:
    return lmdb.open(pack, map_size=2 * osp.getsize(osp.join(pack, 'data.mdb')) + (16 << 20), subdir=True)


def _flip(pack: str, key: bytes, n: int = 200) -> None:
    """Invert ``n`` bytes in the middle of the value of ``key``, in place; its checksum record is kept."""
    env = _writable(pack)
    try:
        with env.begin(write=True) as txn:
            value = bytearray(txn.get(key))
            start = len(value) // 2 - n // 2
            value[start:start + n] = bytes(b ^ 0xFF for b in value[start:start + n])
            txn.put(key, bytes(value))
    finally:
        env.close()


def _row(pack: str, row: int) -> tuple[bytes, int]:
    c = load_packed(pack, note_unchecked=False).columns
    return image_key(c['file_name'][row].decode()), int(c['image_id'][row])


@pytest.fixture
def damaged(tiny_coco_packed, tmp_path) -> tuple[str, bytes, int]:
    """A copy of the tiny COCO val pack with 200 bytes of one stored JPEG inverted (its checksum record
    unchanged): (pack, key, image id)."""
    pack = _copy(osp.join(tiny_coco_packed, 'val_lmdb'), str(tmp_path / 'val_lmdb'))
    key, image_id = _row(pack, DAMAGED_ROW)
    with lmdb.open(pack, readonly=True, lock=False) as env, env.begin() as txn:
        stored = txn.get(checksum_key(key))
    _flip(pack, key)
    with lmdb.open(pack, readonly=True, lock=False) as env, env.begin() as txn:
        assert txn.get(checksum_key(key)) == stored  # the damage is in the image bytes only
    return pack, key, image_id


def _names(message: str, pack: str, key: bytes, image_id: int) -> bool:
    """Whether an error message names the pack, the record key and the image id."""
    return all(s in message for s in (osp.abspath(pack), repr(key.decode()), f'image id {image_id}'))


# ------------------------------------------------------------------------------------------------
# checksums: written by the packer, checked on every read
# ------------------------------------------------------------------------------------------------
def test_packer_writes_a_checksum_record_for_every_record(tiny_coco_packed):
    """Guards the packer's record writer: a version 2 manifest saying ``crc32``, and for every image and
    segmentation record a checksum record holding the CRC32 of its value and its image id; the index and
    categories CRC32 in the manifest. The image bytes themselves stay the original files' bytes."""
    pack = osp.join(tiny_coco_packed, 'val_lmdb')
    packed = load_packed(pack)
    m = packed.manifest
    assert m['format_version'] == FORMAT_VERSION == 2 and m['checksum'] == 'crc32'
    ids = [int(i) for i in packed.columns['image_id']]
    with shared_env(pack).begin() as txn:  # the session's pack: other tests may hold this process's handle
        sums = [k for k in txn.cursor().iternext(values=False) if is_checksum_key(k)]
        assert len(sums) == 2 * len(ids) == 100  # images and segmentations
        for name, image_id in zip(packed.columns['file_name'], ids):
            for key in (image_key(name.decode()), seg_key(image_id)):
                crc, iid = int.from_bytes(txn.get(checksum_key(key))[:4], 'little'), \
                    int.from_bytes(txn.get(checksum_key(key))[4:], 'little', signed=True)
                assert (crc, iid) == (zlib.crc32(txn.get(key)), image_id), key
        assert m['index_crc32'] == zlib.crc32(txn.get(INDEX_KEY))


def test_damaged_image_is_an_error_naming_pack_key_and_image_id(damaged):
    """Guards the check in ``read_record`` (``LmdbImageBackend.get``): the damaged JPEG still decodes (the
    silent fault of the issue: wrong pixels, exit 0), but reading it through the pack, directly or through
    the dataset's pipeline, raises ``DamagedPackError`` naming the pack, the key and the image id; the
    other images read as before."""
    pack, key, image_id = damaged
    with lmdb.open(pack, readonly=True, lock=False) as env, env.begin() as txn:
        assert mmcv.imfrombytes(txn.get(key)) is not None  # without the checksum nothing would notice

    uri = image_uri(pack, key.decode()[len('img/'):])
    with pytest.raises(DamagedPackError, match='CRC32 mismatch') as e:
        LmdbImageBackend().get(uri)
    assert _names(str(e.value), pack, key, image_id), str(e.value)
    assert (e.value.key, e.value.image_id) == (key.decode(), image_id)

    ds = LmdbCocoDataset(data_root=osp.dirname(pack), ann_file='val_lmdb', test_mode=True,
                         pipeline=TEST_PIPELINE)
    assert ds[0]['data_samples'].img_id != image_id  # the others are fine
    with pytest.raises(DamagedPackError) as e:
        ds[DAMAGED_ROW]
    assert _names(str(e.value), pack, key, image_id), str(e.value)


def test_damaged_image_error_reaches_the_user_through_two_dataloader_workers(damaged):
    """Guards the error in DataLoader workers: with 2 worker processes the worker that reads the damaged
    image raises, and the DataLoader re-raises the ``DamagedPackError`` (pack, key, image id in its
    message) in the main process within seconds; no hung worker (``timeout`` turns a hang into a
    failure)."""
    pack, key, image_id = damaged
    ds = LmdbCocoDataset(data_root=osp.dirname(pack), ann_file='val_lmdb', test_mode=True,
                         pipeline=TEST_PIPELINE)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=pseudo_collate, timeout=60)
    t0 = time.monotonic()
    with pytest.raises(DamagedPackError) as e:
        for _ in loader:
            pass
    assert time.monotonic() - t0 < 60
    assert 'DataLoader worker process' in str(e.value)
    assert _names(str(e.value), pack, key, image_id), str(e.value)


def test_damaged_segmentation_and_index_records_are_named(tiny_coco_packed, tmp_path):
    """Guards the checks beyond images: a damaged segmentation record is named when the dataset reads
    masks, a damaged ``__index__`` when the pack is opened (its CRC32 is in the manifest)."""
    pack = _copy(osp.join(tiny_coco_packed, 'val_lmdb'), str(tmp_path / 'seg' / 'val_lmdb'))
    _, image_id = _row(pack, 3)
    _flip(pack, seg_key(image_id), n=4)
    ds = LmdbCocoDataset(data_root=osp.dirname(pack), ann_file='val_lmdb', test_mode=True)
    with pytest.raises(DamagedPackError) as e:
        ds.get_data_info(3)
    assert _names(str(e.value), pack, seg_key(image_id), image_id), str(e.value)

    pack = _copy(osp.join(tiny_coco_packed, 'val_lmdb'), str(tmp_path / 'index' / 'val_lmdb'))
    _flip(pack, INDEX_KEY, n=8)
    with pytest.raises(DamagedPackError, match=r'__index__.*CRC32'):
        LmdbCocoDataset(data_root=osp.dirname(pack), ann_file='val_lmdb')


# ------------------------------------------------------------------------------------------------
# tools/datasets/verify_pack.py
# ------------------------------------------------------------------------------------------------
def test_verify_pack_tool_passes_a_clean_pack_and_lists_exactly_the_damaged_record(tiny_coco_packed,
                                                                                   damaged):
    """Guards the tool: on a clean pack a progress bar, a summary and exit 0; on the damaged copy exit 1
    and exactly one bad record listed, the damaged one, by key and image id."""
    proc = subprocess.run(run_tool('tools/datasets/verify_pack.py', osp.join(tiny_coco_packed, 'val_lmdb')),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '50/50' in proc.stderr  # the progress bar
    assert 'counts match the manifest: 50 images, 382 annotations' in proc.stdout
    assert 'every record matches its checksum' in proc.stdout and proc.stdout.rstrip().endswith('OK')

    pack, key, image_id = damaged
    proc = subprocess.run(run_tool('tools/datasets/verify_pack.py', pack, '--no-progress'),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert '1 bad record(s):' in proc.stdout, proc.stdout
    bad = [line.strip() for line in proc.stdout.splitlines() if line.startswith('  ')]
    assert len(bad) == 1 and bad[0].startswith(f'{key.decode()} (image id {image_id}): CRC32 mismatch'), bad
    assert 'verify val_lmdb' not in proc.stderr  # --no-progress: no bar


def test_verify_pack_finds_every_kind_of_damage(tiny_coco_packed, tmp_path):
    """Guards verify_pack's other checks, each on its own record: a segmentation record whose bytes
    changed, an image whose checksum record was removed, an image that no longer decodes (checksum
    rewritten to match: only the decode check can find it), an image record missing (counts differ from
    the manifest)."""
    pack = _copy(osp.join(tiny_coco_packed, 'val_lmdb'), str(tmp_path / 'val_lmdb'))
    (k_seg, i_seg), (k_sum, i_sum), (k_dec, i_dec), (k_gone, i_gone) = (_row(pack, r) for r in (1, 2, 3, 4))
    seg = seg_key(i_seg)
    _flip(pack, seg, n=4)
    env = _writable(pack)
    with env.begin(write=True) as txn:
        txn.delete(checksum_key(k_sum))
        junk = b'not a JPEG' * 100
        txn.put(k_dec, junk)
        txn.put(checksum_key(k_dec), zlib.crc32(junk).to_bytes(4, 'little') + i_dec.to_bytes(8, 'little'))
        txn.delete(k_gone)
        txn.delete(checksum_key(k_gone))
    env.close()

    result = verify_pack(pack, progress=False)
    assert not result.ok
    found = {b.key: (b.image_id, ' '.join(b.problems)) for b in result.bad}
    assert set(found) == {seg.decode(), k_sum.decode(), k_dec.decode(), k_gone.decode()}, found
    assert found[seg.decode()][0] == i_seg and 'CRC32 mismatch' in found[seg.decode()][1]
    assert found[k_sum.decode()] == (i_sum, 'its checksum record is missing')
    assert found[k_dec.decode()][0] == i_dec and 'cannot decode image' in found[k_dec.decode()][1]
    assert found[k_gone.decode()] == (i_gone, 'image record is missing')
    assert result.count_problems == ['49 image records, the manifest says 50']
    assert 'FAILED' in list(summarize(result))[-1]


# ------------------------------------------------------------------------------------------------
# a truncated data.mdb: named before it is mapped
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def r18_checkpoint(tmp_path_factory) -> str:
    """A real checkpoint of the test config's FCOS-R18 (random weights): only the pack is at fault."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config
    model = MODELS.build(Config.fromfile(R18_CFG).model)
    path = str(tmp_path_factory.mktemp('r18') / 'r18.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return path


def test_truncated_data_mdb_is_named_at_dataset_build_never_sigbus(tiny_coco_packed, tmp_path):
    """Guards the size check in ``open_readonly`` (``data_file_problem``, moved from the packer): with
    ``data.mdb`` cut to half, building the dataset (in a subprocess: the fault was SIGBUS, exit 135) stops
    with ``DamagedPackError`` naming the file and saying it is truncated."""
    pack = _copy(osp.join(tiny_coco_packed, 'val_lmdb'), str(tmp_path / 'val_lmdb'))
    data = osp.join(pack, 'data.mdb')
    os.truncate(data, osp.getsize(data) // 2)
    code = ('import fcos_plugin\nfrom fcos_plugin.datasets import LmdbCocoDataset\n'
            f'LmdbCocoDataset(data_root={str(tmp_path)!r}, ann_file="val_lmdb")\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode not in SIGBUS_CODES and proc.returncode != 0, proc.returncode
    assert f'DamagedPackError: damaged pack {pack}: {data} is truncated' in proc.stderr, proc.stderr[-2000:]


def test_data_mdb_truncated_while_in_use_is_named_never_sigbus(tiny_coco_packed, tmp_path):
    """Guards the size check on every read (``_shared``): a dataset reads its first image, then ``data.mdb``
    is cut to a tenth in place; reading the last image (whose pages were past the new end) stops with
    ``DamagedPackError`` naming the file and both sizes. Without the check the process dies of SIGBUS."""
    pack = _copy(osp.join(tiny_coco_packed, 'val_lmdb'), str(tmp_path / 'val_lmdb'))
    data = osp.join(pack, 'data.mdb')
    code = f'''if True:
        import os
        import fcos_plugin
        from mmengine.registry import init_default_scope
        from fcos_plugin.datasets import LmdbCocoDataset
        init_default_scope('mmdet')
        ds = LmdbCocoDataset(data_root={str(tmp_path)!r}, ann_file='val_lmdb', test_mode=True,
                             pipeline=[dict(type='LoadImageFromFile')])
        assert ds[0]['img'].size
        os.truncate({data!r}, os.path.getsize({data!r}) // 10)
        print('truncated', flush=True)
        ds[len(ds) - 1]
    '''
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
    assert 'truncated' in proc.stdout, proc.stderr[-2000:]
    assert proc.returncode not in SIGBUS_CODES and proc.returncode != 0, proc.returncode
    assert f'DamagedPackError: damaged pack {pack}: {data} is truncated: ' in proc.stderr, proc.stderr[-2000:]
    assert 'when it was opened (cut while in use)' in proc.stderr


@pytest.mark.parametrize('damage', ['truncated', 'flipped'])
def test_tools_name_the_damaged_pack(demo_packed, r18_checkpoint, tmp_path, damage):
    """Guards the tools' handling: ``tools/test.py`` (2 DataLoader workers, as configured) and
    ``browse_dataset.py`` on a demo val pack whose ``data.mdb`` is cut to half, or with 200 bytes of one
    image inverted, exit non-zero (never SIGBUS) with one ``error:`` line naming the file, or the pack,
    key and image id, and no traceback; tools/test.py writes no metrics (it used to exit 0 with metrics)."""
    pack = _copy(osp.join(demo_packed, 'val_lmdb'), str(tmp_path / 'data' / 'val_lmdb'))
    data = osp.join(pack, 'data.mdb')
    if damage == 'truncated':
        os.truncate(data, osp.getsize(data) // 2)
        expect = [f'{data} is truncated']
    else:
        key, image_id = _row(pack, 9)  # the second batch of 8: the second worker
        _flip(pack, key)
        expect = [pack, repr(key.decode()), f'image id {image_id}', 'CRC32 mismatch', 'DataLoader worker']
    work = str(tmp_path / 'work')
    runs = [run_tool('tools/test.py', R18_CFG, r18_checkpoint, '--work-dir', work, '--cfg-options',
                     f'test_dataloader.dataset.data_root={osp.dirname(pack)}',
                     'test_dataloader.persistent_workers=False')]
    if damage == 'truncated':
        runs.append(run_tool('tools/analysis_tools/browse_dataset.py', R18_CFG, '--output-dir',
                             str(tmp_path / 'browse'), '--split', 'val', '--cfg-options',
                             f'val_dataloader.dataset.data_root={osp.dirname(pack)}'))
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode not in SIGBUS_CODES and proc.returncode != 0, (cmd[1], proc.returncode)
        errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
        assert len(errors) == 1 and all(s in errors[0] for s in expect), (cmd[1], proc.stderr[-3000:])
        assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert not osp.exists(osp.join(work, 'test_metrics.json'))


def test_train_stops_at_a_damaged_record_with_one_error_line(demo_packed, tmp_path):
    """Guards ``tools/train.py``'s handling: training (2 DataLoader workers) on a pack with 200 bytes of one
    image inverted stops with exit status 1 and one ``error:`` line naming the pack, the key, the image id
    and the worker, plus what to do, and no traceback (it used to end in the worker's traceback)."""
    pack = _copy(osp.join(demo_packed, 'val_lmdb'), str(tmp_path / 'data' / 'val_lmdb'))
    key, image_id = _row(pack, 9)
    _flip(pack, key)
    work = str(tmp_path / 'work')
    cmd = run_tool('tools/train.py', R18_CFG, '--work-dir', work, '--cfg-options',
                   f'train_dataloader.dataset.data_root={osp.dirname(pack)}',
                   'train_dataloader.dataset.ann_file=val_lmdb', 'train_dataloader.dataset.indices=16',
                   'train_dataloader.num_workers=2', 'train_dataloader.persistent_workers=False',
                   f'val_dataloader.dataset.data_root={demo_packed}', 'train_cfg.max_epochs=1')
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    expect = [pack, repr(key.decode()), f'image id {image_id}', 'CRC32 mismatch', 'DataLoader worker',
              'verify_pack.py', 'Mend the data, then rerun']
    assert len(errors) == 1 and all(s in errors[0] for s in expect), proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]


def test_train_without_a_pack_says_how_to_make_one(tmp_path):
    """``tools/train.py`` with a data root holding no pack: one ``error:`` line saying the pack does not exist
    and the packer command for that split and directory, no traceback, no advice meant for damaged data."""
    root = tmp_path / 'nowhere'
    proc = subprocess.run(run_tool('tools/train.py', R18_CFG, '--work-dir', str(tmp_path / 'work'),
                                   '--cfg-options', f'train_dataloader.dataset.data_root={root}'),
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: '{root}/train_lmdb' does not exist. Pack the split first"), line
    assert f'--target-data-dir {root} --split-name train --pack-type lmdb' in line and 'Mend' not in line


# ------------------------------------------------------------------------------------------------
# packs of format version 1 (before checksums)
# ------------------------------------------------------------------------------------------------
def _as_version_1(pack: str) -> None:
    """Rewrite a pack as format version 1 wrote it: no checksum records, no checksum fields."""
    env = _writable(pack)
    with env.begin(write=True) as txn:
        for key in [k for k in txn.cursor().iternext(values=False) if is_checksum_key(k)]:
            txn.delete(key)
        manifest = json.loads(txn.get(MANIFEST_KEY))
        for name in ('checksum', 'index_crc32', 'categories_crc32'):
            del manifest[name]
        manifest['format_version'] = 1
        txn.put(MANIFEST_KEY, json.dumps(manifest).encode())
    env.close()


def test_version_1_pack_opens_with_a_single_note(tiny_coco_packed, tmp_path, caplog):
    """Guards reading packs written before checksums: a version 1 pack builds a dataset whose images read
    as before (no checksum demanded), with one log line saying it carries no checksums (once per pack
    and process, however often it is opened), and verify_pack checks it without them (exit status 0)."""
    pack = _copy(osp.join(tiny_coco_packed, 'val_lmdb'), str(tmp_path / 'val_lmdb'))
    _as_version_1(pack)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            ds = LmdbCocoDataset(data_root=str(tmp_path), ann_file='val_lmdb', test_mode=True,
                                 pipeline=TEST_PIPELINE)
            assert ds[DAMAGED_ROW]['inputs'].shape[0] == 3
    notes = [r.getMessage() for r in caplog.records if 'no checksums' in r.getMessage()]
    assert len(notes) == 1 and pack in notes[0] and 'version 1' in notes[0], caplog.text
    assert '\n' not in notes[0]

    result = verify_pack(pack, progress=False)
    assert result.ok and not result.checksummed
    assert any('no checksums' in line for line in summarize(result))
