#!/usr/bin/env python
"""Export a detector to an end-to-end ONNX model (NMS inside) with mmdeploy, for ONNX Runtime.

    python tools/deploy/export_onnx.py --config CFG --ckpt CKPT --onnx-name fcos.onnx
    python tools/deploy/export_onnx.py CFG CKPT --onnx-name fcos.onnx      (mmdet's positional form)
        [--deploy-cfg configs/deploy/detection_onnxruntime_dynamic.py] [--shape H W]
        [--work-dir DIR] [--cfg-options k=v ...] [--force]

The work directory becomes a complete mmdeploy work dir: the model, mmdeploy's SDK files
(``deploy.json``, ``pipeline.json``, ``detail.json``), the deploy config used (``deploy_cfg.py``) and
``export_meta.json`` (class names, shapes). Default: dynamic batch/height/width; ``--shape H W``
exports a static model (default deploy config ``detection_onnxruntime_static-512x512.py``).
Inputs: ``input`` (N, 3, H, W) normalised; outputs ``dets`` (N, K, 5), ``labels`` (N, K).
"""
import argparse
import errno
import os
import os.path as osp
import shutil
import tempfile

from mmengine.config import DictAction

from fcos_plugin.deploy import DeployError, export_onnx
from fcos_plugin.utils import quiet_upstream_warnings


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config_pos', nargs='?', metavar='CONFIG', help='model config')
    parser.add_argument('ckpt_pos', nargs='?', metavar='CHECKPOINT',
                        help='checkpoint matching the config')
    parser.add_argument('--config', help='model config (or CONFIG)')
    parser.add_argument('--ckpt', help='checkpoint matching the config (or CHECKPOINT)')
    parser.add_argument('--onnx-name', default='end2end.onnx', help='model file name')
    parser.add_argument('--deploy-cfg', help='mmdeploy deploy config (default: dynamic ONNX '
                        'Runtime, or static 512x512 with --shape)')
    parser.add_argument('--shape', nargs=2, type=int, metavar=('H', 'W'),
                        help='export a static model for this input height and width')
    parser.add_argument('--work-dir', help='output directory (default: '
                        'work_dirs/deploy/<config name>)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override model config settings, key=value')
    parser.add_argument('--force', action='store_true', help='overwrite existing output files')
    args = parser.parse_args()
    for name, flag, meta in (('config', '--config', 'CONFIG'), ('ckpt', '--ckpt', 'CHECKPOINT')):
        positional, option = getattr(args, f'{name}_pos'), getattr(args, name)
        if positional and option:
            parser.error(f'give the {name} once: as {meta} or as {flag}, not both')
        if not (positional or option):
            parser.error(f'the {name} is missing: give CONFIG CHECKPOINT or --config CFG --ckpt CKPT')
        setattr(args, name, positional or option)
    return args


def _cannot_write(work_dir: str, e: OSError) -> str:
    """One line naming the directory, what happened and what to do."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f'no space left on {work_dir}; the partial outputs were removed; free some space there or '
                'give another --work-dir')
    return f'cannot write to {work_dir} ({e.strerror or e}); give a writable --work-dir'


def _check_writable(work_dir: str) -> None:
    """Create ``work_dir`` if needed and a file in it, before minutes of export.

    Raises:
        DeployError: read-only, not permitted or full; nothing is left behind.
    """
    made = []
    path = osp.abspath(work_dir)
    while not osp.exists(path):
        made.append(path)
        path = osp.dirname(path)
    try:
        os.makedirs(work_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix='.write-test-', dir=work_dir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        for d in made:  # innermost first: only the empty directories made here
            try:
                os.rmdir(d)
            except OSError:
                pass
        raise DeployError(_cannot_write(work_dir, e)) from None


def main():
    quiet_upstream_warnings()
    args = parse_args()
    work_dir = args.work_dir or osp.join(
        'work_dirs', 'deploy', osp.splitext(osp.basename(args.config))[0])
    _check_writable(work_dir)
    before = set(os.listdir(work_dir))
    try:
        export_onnx(args.config, args.ckpt, work_dir, onnx_name=args.onnx_name,
                    deploy_cfg=args.deploy_cfg, shape=args.shape, force=args.force,
                    cfg_options=args.cfg_options)
    except OSError as e:
        ours = not e.filename or osp.abspath(str(e.filename)).startswith(osp.abspath(work_dir) + os.sep)
        if not (e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
                or e.errno in (errno.EACCES, errno.EPERM) and ours):
            raise
        for name in set(os.listdir(work_dir)) - before:  # what this export began: partial, removed
            path = osp.join(work_dir, name)
            shutil.rmtree(path, ignore_errors=True) if osp.isdir(path) else os.remove(path)
        raise DeployError(_cannot_write(work_dir, e)) from None


if __name__ == '__main__':
    try:
        main()
    except DeployError as e:
        raise SystemExit(f'error: {e}') from None
