#!/usr/bin/env python
"""Train a detector with MMEngine's Runner (mmdet's tools/train.py conventions).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                                 [--cfg-options k=v ...] [--launcher {none,pytorch,slurm,mpi}]

Multi-GPU / multi-node: ``tools/dist_train.sh CONFIG NGPUS`` (torchrun) or ``tools/slurm_train.sh``.
Without GPUs the same commands train on CPU (gloo), e.g. ``torchrun --nproc_per_node 2 tools/train.py CONFIG
--launcher pytorch``.
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS

import fcos_plugin  # noqa: F401  registers the plugin
from fcos_plugin.datasets.lmdb_format import DamagedPackError, LmdbFormatError, pack_error_message
from fcos_plugin.engine import NonFiniteLossError, UnsafeCheckpointError
from fcos_plugin.models.backbones.efficientnet_weights import CheckpointDownloadError
from fcos_plugin.utils import DiskFullError, adapt_cfg_to_machine, literal_dicts, quiet_upstream_warnings
from fcos_plugin.utils.config_check import ConfigError, check_cfg_option_keys, config_errors_explained


def parse_args():
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true', help='automatic mixed precision (GPU only)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by real total batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the latest checkpoint '
                        'in the work directory')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (e.g. train_cfg.max_epochs=1); a value '
                        'may be dict(k=v, ...) or a list of them, as in configs')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    quiet_upstream_warnings()
    args = parse_args()
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        check_cfg_option_keys(cfg, args.cfg_options)  # a typo'd top-level key would be merged and ignored
        cfg.merge_from_dict(literal_dicts(args.cfg_options))
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    # num_classes against the dataset's classes, before anything is trained (configs of other runtimes)
    cfg.setdefault('default_hooks', {}).setdefault('check_classes', dict(type='NumClassesMatchDatasetHook'))
    # the runner that loads mmengine checkpoints weights-only on torch 2.14 (configs of other runtimes)
    cfg.setdefault('runner_type', 'CompatRunner')
    if args.amp:
        import torch
        if torch.cuda.is_available():
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
        else:  # mmengine's AmpOptimWrapper refuses to start without CUDA
            print('warning: --amp needs a CUDA device; training in fp32 on this machine', file=sys.stderr)
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise SystemExit('error: --auto-scale-lr needs auto_scale_lr.base_batch_size in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    adapt_cfg_to_machine(cfg)
    with config_errors_explained(cfg):  # an unregistered type or a wrong argument: its config path, one line
        runner = RUNNERS.build(cfg)
    try:
        with config_errors_explained(cfg):  # loops, datasets and transforms are built here
            runner.train()
    except DiskFullError as e:  # a checkpoint write (atomic: nothing partial left, see fcos_plugin.utils)
        raise SystemExit(f'error: {e}.{_last_checkpoint_advice(cfg.work_dir, "make room")}') from None
    except LmdbFormatError as e:  # a missing pack, or a damaged record met mid-training (checksums)
        damaged = isinstance(e, DamagedPackError)  # (a missing pack's message says how to pack it)
        advice = _last_checkpoint_advice(cfg.work_dir, 'mend the data') if damaged else ''
        raise SystemExit(f'error: {pack_error_message(e)}{advice}') from None
    except KeyboardInterrupt:  # Ctrl-C: say where training stopped and how to go on, not a traceback
        print(f'interrupted after {runner.iter} iterations.{_last_checkpoint_advice(cfg.work_dir)}',
              file=sys.stderr)
        raise SystemExit(130) from None  # 128 + SIGINT, as a shell reports it


def _last_checkpoint_advice(work_dir: str, fix: str = '') -> str:
    """What to do after training stopped: ``fix`` (if any), then rerun, or resume from the last checkpoint
    (checkpoint writes are atomic: the one ``last_checkpoint`` names is complete)."""
    then = f'{fix}, then ' if fix else ''
    try:
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            last = f.read().strip()
    except OSError:
        if not fix:
            return ' No checkpoint was saved yet: rerun to start again.'
        return f' {then[:1].upper() + then[1:]}rerun.'
    return (f' The last complete checkpoint, {last}, is intact and last_checkpoint points at it: {then}'
            'continue with --resume.')


if __name__ == '__main__':
    try:
        main()
    except (UnsafeCheckpointError, NonFiniteLossError, CheckpointDownloadError) as e:
        raise SystemExit(f'error: {e}') from None
    except ConfigError as e:  # a config or --cfg-options mistake (num_classes included): exit 2, as usage
        print(f'error: {e}', file=sys.stderr)
        raise SystemExit(2) from None
