"""Pack a COCO split (``instances_{split}2017.json`` + ``{split}2017/``) into a self-contained LMDB.

The command-line front end is ``tools/datasets/mscoco_packer.py``; this module is the packer's public
import path and runs one pack, step by step, with the modules of :mod:`.packing` (one job each). Guarantees:

* the original encoded image bytes are stored unchanged (no re-encoding), each record with a CRC32
  checksum record that every read checks (see :mod:`.lmdb_format`);
* every problem in the input (missing/undecodable/truncated image, size mismatch, bad box, unknown
  category, duplicate id, ...) is reported with the image id and file, written to
  ``{target}/{split}_pack_report.json``, and only the affected records are skipped;
  ``strict=True`` turns any problem into a failure that writes nothing;
* sizes are checked as training decodes the image (cv2, EXIF orientation applied: a phone photo stored
  400x200 with orientation 6 is 200x400); images that carry an orientation are listed in the report;
* a file name that leads outside the source directory (``..``, absolute, a symlink out) is a problem of
  its record unless ``allow_outside_src``; a file named by several records is packed once, for the first;
* the pack is built in a temporary sibling directory and renamed into place only when complete, so a
  ``kill -9`` at any moment never leaves a target that a reader takes for complete, and rerunning the same
  command succeeds; a complete target is never overwritten unless asked;
* the LMDB map grows as needed (no ``MDB_MAP_FULL``);
* one packer per split and target directory at a time (``{target}/{split}_lmdb.lock``, ``flock``); a
  second one stops with a message instead of touching the first one's temporary directory; leftovers of
  killed runs (temporary ``.{split}_lmdb.tmp-*`` and superseded ``.{split}_lmdb.old-*`` directories) are
  removed at the start of the next run, under the lock;
* worker processes die with the packer (``PR_SET_PDEATHSIG`` on Linux, a parent watch elsewhere) and at
  most :func:`max_images_in_flight` images are read ahead of the writer;
* a full disk, a read-only or non-directory target, a damaged existing pack and an over-long key are
  errors naming the directory, file or record and what to do, never raw tracebacks.
"""
from __future__ import annotations

import os.path as osp
import time
from concurrent.futures.process import BrokenProcessPool

import lmdb

from ..utils.fileio import disk_space, mib
from .packing.failures import write_failure
from .packing.images import EXIF_ORIENTATION, DecodedSize, check_image, decode_problem, decoded_size
from .packing.options import DEFAULT_BBOX_TOLERANCE, PackOptions, report_path, split_paths, target_path
from .packing.records import MAX_KEY_BYTES, CocoRecords, read_records
from .packing.report import PackError, PackResult, Problem, summarize, write_report
from .packing.target import SplitLock, clear_the_way, make_target_dir, new_work_dir, swap_into_place
from .packing.workers import CHUNK_IMAGES, TASKS_PER_WORKER, max_images_in_flight
from .packing.writer import BATCH_BYTES, BATCH_IMAGES, PackWriter

__all__ = ['BATCH_BYTES', 'BATCH_IMAGES', 'CHUNK_IMAGES', 'DEFAULT_BBOX_TOLERANCE', 'DecodedSize',
           'EXIF_ORIENTATION', 'MAX_KEY_BYTES', 'PackError', 'PackOptions', 'PackResult', 'Problem',
           'TASKS_PER_WORKER', 'check_image', 'decode_problem', 'decoded_size', 'max_images_in_flight',
           'pack', 'pack_coco', 'report_path', 'split_paths', 'summarize', 'target_path']


def pack_coco(src_dir: str, target_dir: str, split: str, *, with_segmentation: bool = False,
              strict: bool = False, overwrite: bool = False, num_workers: int = 2,
              bbox_tolerance: float = DEFAULT_BBOX_TOLERANCE, map_size: int | None = None,
              progress: bool = True, log=print, allow_outside_src: bool = False) -> PackResult:
    """Pack one COCO split into ``{target_dir}/{split}_lmdb``; see the module docstring.

    An image file that lies outside ``src_dir`` (and the split's image directory) once ``..`` and symlinks
    are resolved is a problem of its record, unless ``allow_outside_src``.
    """
    return pack(PackOptions(src_dir, target_dir, split, with_segmentation=with_segmentation, strict=strict,
                            overwrite=overwrite, num_workers=num_workers, bbox_tolerance=bbox_tolerance,
                            map_size=map_size, progress=progress, log=log,
                            allow_outside_src=allow_outside_src))


def pack(opts: PackOptions) -> PackResult:
    """:func:`pack_coco` with its settings in one object."""
    t0 = time.perf_counter()
    if not osp.isfile(opts.ann_path):
        raise PackError(f'split {opts.split!r} not found: {opts.ann_path} does not exist. Expected COCO '
                        f'layout {opts.src_dir}/annotations/instances_{opts.split}2017.json and '
                        f'{opts.src_dir}/{opts.split}2017/.')
    if not osp.isdir(opts.img_dir):
        raise PackError(f'split {opts.split!r}: image directory {opts.img_dir} does not exist.')
    make_target_dir(opts.target_dir)
    lock = SplitLock(opts.target_dir, opts.split)
    lock.acquire()
    try:
        return _pack_locked(opts, lock, t0)
    finally:
        lock.release()


def _pack_locked(opts: PackOptions, lock: SplitLock, t0: float) -> PackResult:
    clear_the_way(opts)
    problems: list[Problem] = []
    records = read_records(opts.ann_path, opts.img_dir, opts.src_dir, opts.bbox_tolerance, problems,
                           opts.allow_outside_src)
    for p in problems:
        opts.log(p.line())
    if opts.strict and problems:
        raise PackError(f'{len(problems)} problem(s) in {opts.ann_path} and --strict is set; nothing '
                        'written.')
    need = _image_bytes(opts, records.images)
    map_size = opts.map_size if opts.map_size is not None else int(need * 1.25) + (64 << 20)
    writer = PackWriter(new_work_dir(opts.target_dir, opts.split, 'tmp'), map_size)
    manifest, exif_oriented = _write_and_swap(writer, opts, records, problems, lock, t0, need)
    result = PackResult(target=opts.final, num_images=manifest['num_images'],
                        num_annotations=manifest['num_annotations'], num_crowd=manifest['num_crowd'],
                        problems=problems, seconds=time.perf_counter() - t0,
                        bytes_written=manifest['image_bytes'],
                        report_path=report_path(opts.target_dir, opts.split), exif_oriented=exif_oriented)
    try:
        write_report(result, manifest)
    except OSError as e:
        raise write_failure(e, opts.target_dir, f'writing the report {result.report_path}',
                            after=f'The pack {opts.final} itself is complete.') from None
    return result


def _image_bytes(opts: PackOptions, images: list[dict]) -> int:
    """The size of the image files to pack; a warning is logged when the target has less room free."""
    need = sum(osp.getsize(osp.join(opts.img_dir, im['file_name']))
               for im in images if osp.isfile(osp.join(opts.img_dir, im['file_name'])))
    space = disk_space(opts.target_dir)
    if space is not None and need > space[0]:
        opts.log(f'warning: {opts.target_dir} has {mib(space[0])} free but the images alone take '
                 f'{mib(need)}; the pack will most likely stop with "no space left"')
    return need


def _write_and_swap(writer: PackWriter, opts: PackOptions, records: CocoRecords, problems: list[Problem],
                    lock: SplitLock, t0: float, need: int) -> tuple[dict, list[dict]]:
    """Write the pack into ``writer``'s temporary directory and rename it into place; on any failure the
    temporary directory is removed and the previous pack, if any, stays."""
    final = opts.final
    try:
        manifest, exif_oriented = writer.write(opts, records, problems, (lock.fd,), t0)
        # rename is atomic: readers see either nothing/the old pack or the new one
        writer.stage = f'moving {writer.tmp} to {final}'
        swap_into_place(writer.tmp, final, new_work_dir(opts.target_dir, opts.split, 'old'))
    except (OSError, lmdb.Error) as e:
        kept = f'{final} was not changed' if osp.lexists(final) else 'nothing else was written'
        err = write_failure(e, opts.target_dir, writer.stage, need=need,
                            after=f'The partial pack was removed; {kept}.')
        writer.discard()
        raise err from None
    except BrokenProcessPool:
        writer.discard()
        raise PackError('a worker process reading images died (killed, perhaps for lack of memory); nothing '
                        'was written. Rerun with fewer --num-workers.') from None
    except BaseException:
        writer.discard()
        raise
    return manifest, exif_oriented
