#!/usr/bin/env python
"""Test (and evaluate) a checkpoint with MMEngine's Runner (mmdet's tools/test.py conventions).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out results.pkl] [--show-dir DIR]
                                           [--cfg-options k=v ...] [--launcher ...]

Metrics are logged and also written to ``WORK_DIR/test_metrics.json``.
"""
import argparse
import errno
import logging
import os
import os.path as osp
import sys

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS

import fcos_plugin  # noqa: F401  registers the plugin
from fcos_plugin.datasets.lmdb_format import LmdbFormatError, pack_error_message
from fcos_plugin.engine import CheckpointMismatchError, UnsafeCheckpointError
from fcos_plugin.models.backbones.efficientnet_weights import CheckpointDownloadError
from fcos_plugin.utils import (
    DiskFullError,
    adapt_cfg_to_machine,
    literal_dicts,
    quiet_upstream_warnings,
    write_json_atomic,
)
from fcos_plugin.utils.config_check import ConfigError, check_cfg_option_keys, config_errors_explained


def parse_args():
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='directory for logs and test_metrics.json')
    parser.add_argument('--out', help='dump raw predictions to this .pkl file')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='draw predictions into WORK_DIR/TIMESTAMP/SHOW_DIR')
    parser.add_argument('--wait-time', type=float, default=2, help='seconds between shown images')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value; a value may be dict(k=v, ...) or a '
                        'list of them, as in configs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    quiet_upstream_warnings()
    args = parse_args()
    # a log line that cannot be written (full or read-only disk) must not print logging's own traceback:
    # the write that matters stops the run with one line below
    logging.raiseExceptions = False
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'error: checkpoint {args.checkpoint} does not exist')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        raise SystemExit('error: --out must name a .pkl file')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        check_cfg_option_keys(cfg, args.cfg_options)  # a typo'd top-level key would be merged and ignored
        cfg.merge_from_dict(literal_dicts(args.cfg_options))
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    # refuse a checkpoint of another model (fewer than half of the model's weights in it) before testing
    # (it also refuses tensors of other shapes: a class layer for another num_classes left random)
    cfg.custom_hooks = [*cfg.get('custom_hooks', []), dict(type='CheckpointFitsModelHook')]
    # num_classes against the test set's classes, before the checkpoint is loaded
    cfg.setdefault('default_hooks', {}).setdefault('check_classes', dict(type='NumClassesMatchDatasetHook'))
    # the runner that loads mmengine checkpoints weights-only on torch 2.14 (configs of other runtimes)
    cfg.setdefault('runner_type', 'CompatRunner')
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    adapt_cfg_to_machine(cfg)
    work_dir = osp.abspath(cfg.work_dir)
    before = set(os.listdir(work_dir)) if osp.isdir(work_dir) else None
    try:
        with config_errors_explained(cfg):  # an unregistered type or a wrong argument: its config path
            runner = RUNNERS.build(cfg)
            if args.out is not None:
                runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
            metrics = runner.test()
    except OSError as e:
        if not _output_error(e, work_dir):
            raise
        _remove_new_runs(work_dir, before)  # the log directory this run began: partial, removed
        raise SystemExit(_output_error_message(e, work_dir, 'the run directory it began was removed')) \
            from None
    if runner.rank == 0:
        out = osp.join(cfg.work_dir, 'test_metrics.json')
        try:  # whole or not at all (was: a 0-byte file on a full disk)
            write_json_atomic({k: float(v) if isinstance(v, (int, float)) else str(v)
                               for k, v in (metrics or {}).items()}, out)
        except OSError as e:
            if not _output_error(e, work_dir):
                raise
            raise SystemExit(_output_error_message(e, osp.dirname(osp.abspath(out)),
                                                   'the metrics are in the log above; no test_metrics.json '
                                                   'was left')) from None
        print(f'metrics written to {out}')


def _output_error(e: OSError, work_dir: str) -> bool:
    """A write refused by the file system (full, read-only, no permission), not a bad input file."""
    if isinstance(e, DiskFullError) or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    return e.errno in (errno.EACCES, errno.EPERM) and (
        not e.filename or osp.abspath(str(e.filename)).startswith(work_dir + os.sep))


def _output_error_message(e: OSError, directory: str, kept: str) -> str:
    """One line: the directory, what happened, what was left, what to do."""
    if isinstance(e, DiskFullError):
        what = str(e)
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = f'no space left on {directory}'
        todo = 'free some space there or give another --work-dir'
    else:
        what = f'cannot write to {directory} ({e.strerror})'
        todo = 'give a writable --work-dir'
    return f'error: {what}; {kept}; {todo}'


def _remove_new_runs(work_dir: str, before) -> None:
    """Remove the timestamped run directories (and the work dir itself) this run created."""
    import re
    import shutil
    if not osp.isdir(work_dir):
        return
    if before is None:
        shutil.rmtree(work_dir, ignore_errors=True)
        return
    for name in set(os.listdir(work_dir)) - before:
        if re.fullmatch(r'\d{8}_\d{6}', name):
            shutil.rmtree(osp.join(work_dir, name), ignore_errors=True)


if __name__ == '__main__':
    try:
        main()
    except (UnsafeCheckpointError, CheckpointMismatchError, CheckpointDownloadError, DiskFullError) as e:
        raise SystemExit(f'error: {e}') from None
    except LmdbFormatError as e:  # a missing or damaged pack (truncated data.mdb, bad checksum): named
        raise SystemExit(f'error: {pack_error_message(e)}') from None
    except ConfigError as e:  # a config or --cfg-options mistake (num_classes included): exit 2, as usage
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
