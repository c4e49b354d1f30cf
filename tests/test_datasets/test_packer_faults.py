"""The COCO -> LMDB packer under faults: kill -9, orphaned workers, unbounded read-ahead, a damaged existing
pack, two packers of one split, leftovers of interrupted runs, over-long keys, read-only and file targets,
a full disk. Real lmdb, real processes and the real tiny COCO subset throughout; nothing is mocked."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import os.path as osp
import shutil
import signal
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor

import lmdb
import numpy as np
import pytest
from PIL import Image

from fcos_plugin.datasets import LmdbFormatError, PackError, load_packed, pack_coco
from fcos_plugin.datasets.lmdb_format import IMAGE_KEY_PREFIX, MANIFEST_KEY
from fcos_plugin.datasets.packing.workers import checked_images, max_images_in_flight

from ..conftest import run_tool, tmpfs

REPEAT = 4  # tiny_coco val (50 images, 8 MB) four times: several commits, about a second to pack
N_BIG = 50 * REPEAT
CLEAN = ['val_lmdb', 'val_pack_report.json']
quiet = dict(progress=False, log=lambda s: None)


def _json(root: str, split: str = 'val') -> dict:
    with open(osp.join(root, 'annotations', f'instances_{split}2017.json')) as f:
        return json.load(f)


def _write_json(root: str, data, split: str = 'val') -> None:
    with open(osp.join(root, 'annotations', f'instances_{split}2017.json'), 'w') as f:
        json.dump(data, f)


def _tool(src: str, out: str, *extra: str) -> list[str]:
    return run_tool('tools/datasets/mscoco_packer.py', '--src-data-dir', src, '--target-data-dir', out,
                    '--split-name', 'val', '--pack-type', 'lmdb', '--no-progress', *extra)


def _sha(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _tmp_dirs(out: str) -> list[str]:
    return sorted(n for n in os.listdir(out) if n.startswith('.val_lmdb.tmp-'))


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``cond`` every 2 ms until it returns something true; None if ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            return None
        time.sleep(0.002)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


@pytest.fixture(scope='module')
def big_src(tiny_coco, tmp_path_factory) -> str:
    """tiny_coco val ``REPEAT`` times (hard links or copies, fresh ids): big enough to stop mid-write."""
    dst = str(tmp_path_factory.mktemp('big_src'))
    data = _json(tiny_coco)
    os.makedirs(osp.join(dst, 'annotations'))
    os.makedirs(osp.join(dst, 'val2017'))
    images, anns = [], []
    for r in range(REPEAT):
        for im in data['images']:
            new = dict(im, id=im['id'] * 100 + r, file_name=f'{r}_{im["file_name"]}')
            src_file, dst_file = (osp.join(tiny_coco, 'val2017', im['file_name']),
                                  osp.join(dst, 'val2017', new['file_name']))
            try:
                os.link(src_file, dst_file)
            except OSError:  # another file system
                shutil.copyfile(src_file, dst_file)
            images.append(new)
        anns += [dict(a, id=a['id'] * 100 + r, image_id=a['image_id'] * 100 + r) for a in data['annotations']]
    _write_json(dst, dict(data, images=images, annotations=anns))
    return dst


def _lmdb_items(path: str) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(path, readonly=True, lock=False, subdir=True)
    try:
        with env.begin() as txn:
            return list(txn.cursor().iternext())
    finally:
        env.close()


def _entries(path: str) -> int:
    """Records committed to an LMDB (read from its newest meta page)."""
    env = lmdb.open(path, readonly=True, lock=False, subdir=True)
    try:
        return env.stat()['entries']
    finally:
        env.close()


def _assert_same_pack(a: str, b: str) -> None:
    """Two packs hold the same records: manifest (but its creation time), categories, index, every key."""
    pa, pb = load_packed(a), load_packed(b)
    ma, mb = (dict(p.manifest, created=None) for p in (pa, pb))
    assert ma == mb
    assert pa.categories == pb.categories
    assert pa.columns.keys() == pb.columns.keys()
    for k in pa.columns:
        assert np.array_equal(pa.columns[k], pb.columns[k]), k
    ia = [(k, v) for k, v in _lmdb_items(a) if k != MANIFEST_KEY]
    ib = [(k, v) for k, v in _lmdb_items(b) if k != MANIFEST_KEY]
    assert [k for k, _ in ia] == [k for k, _ in ib]
    assert all(va == vb for (_, va), (_, vb) in zip(ia, ib))


def _kill_mid_write(cmd: list[str], out: str) -> tuple[str, int]:
    """Run the packer, stop it (SIGSTOP) as soon as its temporary LMDB holds committed records, check it
    has not finished, then SIGKILL it. Returns the temporary directory and how many images it held: the
    process was frozen between the check and the kill, so that is the state the kill hit."""
    for _attempt in range(3):
        before = set(_tmp_dirs(out)) if osp.isdir(out) else set()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def committed():
                if not osp.isdir(out):
                    return None
                for name in set(_tmp_dirs(out)) - before:
                    with contextlib.suppress(OSError, lmdb.Error):  # data.mdb grows while a commit runs
                        if osp.getsize(osp.join(out, name, 'data.mdb')) > 1 << 20 \
                                and _entries(osp.join(out, name)) > 0:
                            return name
                return None

            name = _wait_for(committed, 120, 'the temporary pack to hold records', proc)
            if name is not None:
                proc.send_signal(signal.SIGSTOP)
                still_writing = osp.isdir(osp.join(out, name)) and proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if name is None or not still_writing:  # it finished before it could be stopped: try again
            assert proc.returncode == 0, proc.stderr.read()
            continue
        tmp = osp.join(out, name)
        items = _lmdb_items(tmp)
        assert MANIFEST_KEY not in dict(items), 'the kill came after the pack was complete'
        n_images = sum(k.startswith(IMAGE_KEY_PREFIX.encode()) for k, _ in items)
        return tmp, n_images
    pytest.fail('the packer finished three times before it could be stopped mid-write')


# ------------------------------------------------------------------------------------------------
# kill -9, orphaned workers, bounded read-ahead
# ------------------------------------------------------------------------------------------------
def test_kill_9_mid_write_loses_nothing_and_a_rerun_equals_an_uninterrupted_pack(big_src, tmp_path):
    """Guards the atomic write (temporary directory, manifest last, rename). The kill provably lands
    mid-write: the packer is frozen once its temporary LMDB holds committed images and has not finished,
    then killed, and the temporary LMDB is read back (some but not all images, no manifest). No target
    taken for complete is left, a rerun succeeds despite the stale temporary directory and lock file and
    equals an uninterrupted pack key for key; a killed ``--overwrite`` leaves the previous pack byte for
    byte, and the next run removes its leftovers."""
    ref = pack_coco(big_src, str(tmp_path / 'ref'), 'val', **quiet)
    out = str(tmp_path / 'out')
    final = osp.join(out, 'val_lmdb')

    tmp, n_images = _kill_mid_write(_tool(big_src, out), out)
    assert 0 < n_images < N_BIG, n_images
    assert not osp.exists(final)
    with pytest.raises(LmdbFormatError):
        load_packed(final)
    assert osp.isdir(tmp) and osp.exists(osp.join(out, 'val_lmdb.lock'))  # what kill -9 leaves behind

    pack_coco(big_src, out, 'val', **quiet)  # the rerun (in-process: the tool only wraps this call)
    _assert_same_pack(final, ref.target)
    assert sorted(os.listdir(out)) == CLEAN, 'stale temporary directory or lock file left'

    before = _sha(osp.join(final, 'data.mdb'))
    tmp, n_images = _kill_mid_write(_tool(big_src, out, '--overwrite'), out)
    assert 0 < n_images < N_BIG, n_images
    assert _sha(osp.join(final, 'data.mdb')) == before
    _assert_same_pack(final, ref.target)
    with pytest.raises(PackError, match='already exists'):  # any next run clears the leftovers
        pack_coco(big_src, out, 'val', **quiet)
    assert sorted(os.listdir(out)) == CLEAN
    assert _sha(osp.join(final, 'data.mdb')) == before


def _children(pid: int) -> dict[int, str]:
    """{pid: start time} of the processes whose parent is ``pid`` (from /proc)."""
    found = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields and int(fields[1]) == pid:
                found[int(entry)] = fields[19]
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the state on (state, ppid, ..., starttime at index 19); None if gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rpartition(')')[2].split()
    except OSError:
        return None


def _alive(pid: int, start: str) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != 'Z' and fields[19] == start


@pytest.mark.skipif(not osp.isdir('/proc/self'), reason='reads processes from /proc')
def test_workers_die_with_a_killed_packer(big_src, tmp_path):
    """Guards PR_SET_PDEATHSIG in the worker initializer: within seconds of ``kill -9`` of the packer none
    of its worker processes remains (they used to wait forever on their task queue, re-parented to init,
    holding hundreds of MB each)."""
    out = str(tmp_path / 'out')
    workers: dict[int, str] = {}
    for _attempt in range(3):
        proc = subprocess.Popen(_tool(big_src, out, '--num-workers', '2'), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            workers = _wait_for(lambda: len(c := _children(proc.pid)) >= 2 and c, 120,
                                'two worker processes', proc) or {}
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            if not workers:  # it finished before its workers were seen
                shutil.rmtree(out, ignore_errors=True)
                continue
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(_alive(p, s) for p, s in workers.items()):
                time.sleep(0.05)
            left = [p for p, s in workers.items() if _alive(p, s)]
            assert not left, f'worker processes {left} outlived the killed packer'
            return
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for p, s in workers.items():  # only the workers this test started
                if _alive(p, s):
                    os.kill(p, signal.SIGKILL)
    pytest.fail('the packer finished three times before its workers were seen')


def test_workers_read_a_bounded_number_of_images_ahead(tmp_path):
    """Guards the bounded submission window: at no point are more than ``max_images_in_flight(workers)``
    images submitted to the worker processes and not yet taken by the writer, however many the split has
    (``Executor.map`` submitted all of them at once and held every image's bytes in memory whenever the
    writer was slower than the readers). Real worker processes and files; the pool only counts submits."""
    img_dir = str(tmp_path)
    Image.new('RGB', (8, 8), (200, 30, 30)).save(osp.join(img_dir, 'a.jpg'))
    images = [dict(id=i, file_name='a.jpg', width=8, height=8) for i in range(600)]
    submitted = [0]

    class CountingPool(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted[0] += len(args[0])  # a task is one chunk of images, for map() as for the window
            return super().submit(fn, *args, **kwargs)

    bound = max_images_in_flight(2)
    assert bound * 4 < len(images)
    worst = consumed = 0
    for im, data, problem, _ in checked_images(img_dir, images, 2, pool_factory=CountingPool):
        assert problem is None and data and im['id'] == consumed  # in order, every image read
        worst = max(worst, submitted[0] - consumed)
        consumed += 1
    assert consumed == submitted[0] == len(images)
    assert worst <= bound, f'{worst} images in flight, the bound is {bound}'


# ------------------------------------------------------------------------------------------------
# the existing target, two packers, leftovers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_damaged_existing_pack_is_named_and_left_alone(tiny_coco, tmp_path, damage):
    """Guards the existing-target check: a pack whose data.mdb is not LMDB (``lmdb.InvalidError``, was a
    traceback) or is truncated (liblmdb maps past its end: was SIGBUS, exit 135) stops the packer with a
    message naming the pack and advising --overwrite (exit 1, no traceback, from the tool) and nothing
    deleted; --overwrite then replaces it."""
    out = str(tmp_path / 'out')
    final = osp.join(out, 'val_lmdb')
    pack_coco(tiny_coco, out, 'val', **quiet)
    data = osp.join(final, 'data.mdb')
    size = osp.getsize(data)
    if damage == 'garbage':
        with open(data, 'wb') as f:
            f.write(np.random.default_rng(0).bytes(size))
    else:
        os.truncate(data, size // 2)
    before = (_sha(data), sorted(os.listdir(out)), sorted(os.listdir(final)))

    if damage == 'truncated':  # in a subprocess: the fault it guards against is a SIGBUS
        proc = subprocess.run(_tool(tiny_coco, out), capture_output=True, text=True)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        assert 'Traceback' not in proc.stderr
        message = proc.stderr
    else:
        with pytest.raises(PackError) as e:
            pack_coco(tiny_coco, out, 'val', **quiet)
        message = str(e.value)
    assert final in message and 'damaged' in message and '--overwrite' in message
    assert ('truncated' if damage == 'truncated' else 'MDB_INVALID') in message
    assert (_sha(data), sorted(os.listdir(out)), sorted(os.listdir(final))) == before

    r = pack_coco(tiny_coco, out, 'val', overwrite=True, **quiet)
    assert load_packed(r.target).manifest['num_images'] == 50


def test_a_second_packer_of_the_split_is_refused_and_leaves_the_first_alone(big_src, tmp_path):
    """Guards the split lock (``{split}_lmdb.lock``, flock): while a packer is writing (frozen with SIGSTOP
    once its temporary directory exists), a second packer of the same split, with or without --overwrite,
    stops with a message naming the lock and the first packer's pid and removes nothing (its stale-directory
    cleanup used to delete the running packer's temporary directory); the first packer then completes."""
    out = str(tmp_path / 'out')
    proc = subprocess.Popen(_tool(big_src, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        tmps = _wait_for(lambda: osp.isdir(out) and _tmp_dirs(out), 120, 'the temporary pack', proc)
        assert tmps, proc.stderr.read()
        proc.send_signal(signal.SIGSTOP)
        for overwrite in (False, True):
            with pytest.raises(PackError, match='another packer') as e:
                pack_coco(big_src, out, 'val', overwrite=overwrite, **quiet)
            assert osp.join(out, 'val_lmdb.lock') in str(e.value) and f'pid {proc.pid}' in str(e.value)
            assert _tmp_dirs(out) == tmps
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert load_packed(osp.join(out, 'val_lmdb')).manifest['num_images'] == N_BIG
    assert sorted(os.listdir(out)) == CLEAN


def test_leftovers_of_an_interrupted_overwrite_are_removed_or_restored(tiny_coco, tmp_path):
    """Guards the cleanup at the start of every run (under the lock): the ``.old-*`` of an --overwrite
    killed while deleting the superseded pack, and temporary directories, are removed even by a run that
    then refuses to overwrite; an --overwrite killed between its two renames (no pack in place, the
    previous one in ``.old-*``) gets the previous pack put back, so nothing good is lost. The two windows
    are a rename wide, so these states are made with the packer's own names instead of by a kill."""
    out = str(tmp_path / 'out')
    final = osp.join(out, 'val_lmdb')
    pack_coco(tiny_coco, out, 'val', **quiet)
    good = _sha(osp.join(final, 'data.mdb'))

    shutil.copytree(final, osp.join(out, '.val_lmdb.old-0123abcd'))  # killed while removing the old pack
    shutil.copytree(final, osp.join(out, '.val_lmdb.tmp-89abcdef'))
    os.remove(osp.join(out, '.val_lmdb.tmp-89abcdef', 'lock.mdb'))
    with pytest.raises(PackError, match='already exists'):
        pack_coco(tiny_coco, out, 'val', **quiet)
    assert sorted(os.listdir(out)) == CLEAN

    os.rename(final, osp.join(out, '.val_lmdb.old-0123abcd'))  # killed between the two renames
    shutil.copytree(osp.join(out, '.val_lmdb.old-0123abcd'), osp.join(out, '.val_lmdb.tmp-89abcdef'))
    lines: list[str] = []
    with pytest.raises(PackError, match='already exists'):
        pack_coco(tiny_coco, out, 'val', progress=False, log=lines.append)
    assert any('restored' in line and '.val_lmdb.old-0123abcd' in line for line in lines), lines
    assert sorted(os.listdir(out)) == CLEAN
    assert _sha(osp.join(final, 'data.mdb')) == good


# ------------------------------------------------------------------------------------------------
# named errors: over-long keys, file and read-only targets, full disk
# ------------------------------------------------------------------------------------------------
def test_over_long_or_unencodable_file_name_is_a_named_record_problem(tiny_coco, tmp_path):
    """Guards the key check: a ``file_name`` longer than LMDB's 511-byte keys allow (``img/`` + 507 bytes;
    was a raw ``lmdb.BadValsizeError`` traceback) or not encodable as UTF-8 is a record problem naming
    the image id and file name: skipped and reported by default, fatal with --strict (exit 1, no
    traceback, nothing written)."""
    src = str(tmp_path / 'src')
    data = _json(tiny_coco)
    os.makedirs(osp.join(src, 'annotations'))
    ims = data['images'][:3]
    long_name = '/'.join(['d' * 200, 'e' * 200, 'f' * 150]) + '.jpg'  # 555 bytes, each part < 255
    for im, name in zip(ims, (long_name, 'bad\ud800name.jpg', ims[2]['file_name'])):
        if '\ud800' not in name:
            os.makedirs(osp.dirname(osp.join(src, 'val2017', name)), exist_ok=True)
            shutil.copyfile(osp.join(tiny_coco, 'val2017', im['file_name']), osp.join(src, 'val2017', name))
        im['file_name'] = name
    ids = {im['id'] for im in ims}
    _write_json(src, dict(data, images=ims,
                          annotations=[a for a in data['annotations'] if a['image_id'] in ids]))

    r = pack_coco(src, str(tmp_path / 'out'), 'val', **quiet)
    kinds = {(p.kind, p.image_id, p.file_name) for p in r.problems}
    assert kinds == {('file_name_too_long', ims[0]['id'], long_name),
                     ('bad_file_name', ims[1]['id'], 'bad\ud800name.jpg')}
    assert [int(i) for i in load_packed(r.target).columns['image_id']] == [ims[2]['id']]

    out = str(tmp_path / 'strict')
    proc = subprocess.run(_tool(src, out, '--strict'), capture_output=True, text=True)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert f'image {ims[0]["id"]} ({long_name})' in proc.stderr and '511' in proc.stderr
    assert f'image {ims[1]["id"]} (' in proc.stderr and 'UTF-8' in proc.stderr
    assert 'strict' in proc.stderr and os.listdir(out) == []


def test_target_that_is_a_file_is_named_and_left_alone(tiny_coco, tmp_path):
    """Guards the target checks: a --target-data-dir that is a regular file (was a raw FileExistsError), or
    a ``{split}_lmdb`` that is one (was renamed away, even deleted with --overwrite), is an error naming
    it, and the file is left as it was."""
    target = tmp_path / 'target'
    target.write_bytes(b'not a directory')
    with pytest.raises(PackError, match=f'{target} is a file, not a directory'):
        pack_coco(tiny_coco, str(target), 'val', **quiet)
    assert target.read_bytes() == b'not a directory'

    out = tmp_path / 'out'
    out.mkdir()
    (out / 'val_lmdb').write_bytes(b'mine')
    for overwrite in (False, True):
        with pytest.raises(PackError, match='val_lmdb is a file, not a pack'):
            pack_coco(tiny_coco, str(out), 'val', overwrite=overwrite, **quiet)
        assert os.listdir(out) == ['val_lmdb'] and (out / 'val_lmdb').read_bytes() == b'mine'


@contextlib.contextmanager
def _read_only_dir(path: str):
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system
        with tmpfs(path, 'ro,size=1m') as p:
            yield p
        return
    os.makedirs(path)
    os.chmod(path, 0o555)
    try:
        yield path
    finally:
        os.chmod(path, 0o755)


def test_read_only_target_is_a_clear_error(tiny_coco, tmp_path):
    """Guards the write checks: a read-only --target-data-dir, or a new one under a read-only directory, is
    an error naming the directory and asking for a writable one (was a raw PermissionError/OSError
    traceback), exit 1."""
    with _read_only_dir(str(tmp_path / 'ro')) as ro:
        proc = subprocess.run(_tool(tiny_coco, ro), capture_output=True, text=True)
        assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
        assert f'cannot write to {ro}' in proc.stderr and 'writable --target-data-dir' in proc.stderr
        sub = osp.join(ro, 'sub')
        with pytest.raises(PackError, match=f'cannot write to {sub} .*writable --target-data-dir'):
            pack_coco(tiny_coco, sub, 'val', **quiet)
        assert os.listdir(ro) == []


def test_full_disk_is_named_and_the_previous_pack_survives(tiny_coco, tmp_path):
    """Guards the full-disk path on a real full file system (a 12 MB tmpfs holding one 8.4 MB pack): an
    --overwrite that runs out of space while committing (liblmdb says only ``mdb_txn_commit:
    Input/output error``) stops with "no space left on <dir>" and what to do, exit 1, no traceback; the
    partial pack is removed and the previous pack is untouched."""
    with tmpfs(str(tmp_path / 'small'), 'size=12m') as small:
        r = pack_coco(tiny_coco, small, 'val', **quiet)
        good = _sha(osp.join(r.target, 'data.mdb'))
        proc = subprocess.run(_tool(tiny_coco, small, '--overwrite'), capture_output=True, text=True)
        assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
        assert f'no space left on {small}' in proc.stderr and '--target-data-dir' in proc.stderr
        assert sorted(os.listdir(small)) == CLEAN
        assert _sha(osp.join(r.target, 'data.mdb')) == good
        assert load_packed(r.target).manifest['num_images'] == 50
