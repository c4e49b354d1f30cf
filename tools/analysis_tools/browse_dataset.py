#!/usr/bin/env python
"""Draw dataset samples (after the config's train pipeline) with their ground-truth boxes to image files.

    python tools/analysis_tools/browse_dataset.py CONFIG --output-dir DIR [--num 20] [--split train|val]
                                                  [--raw] [--cfg-options ...]

``--raw`` draws the stored images without the pipeline's augmentation. Works for LMDB packs and files alike.
"""
import argparse
import os
import os.path as osp

import numpy as np
from mmdet.registry import DATASETS, VISUALIZERS
from mmdet.structures.bbox import BaseBoxes
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

import fcos_plugin  # noqa: F401
from fcos_plugin.datasets.lmdb_format import LmdbFormatError, pack_error_message
from fcos_plugin.utils import quiet_upstream_warnings


def parse_args():
    p = argparse.ArgumentParser(description='Browse a dataset: draw samples with their boxes')
    p.add_argument('config')
    p.add_argument('--output-dir', required=True, help='where the pictures are written')
    p.add_argument('--split', choices=['train', 'val', 'test'], default='train')
    p.add_argument('--num', type=int, default=20, help='how many samples (evenly spaced)')
    p.add_argument('--raw', action='store_true', help='no augmentation: load, annotate, pack only')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def main():
    quiet_upstream_warnings()
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    ds_cfg = cfg[f'{args.split}_dataloader'].dataset
    while 'dataset' in ds_cfg:  # RepeatDataset and friends
        ds_cfg = ds_cfg.dataset
    if args.raw:
        ds_cfg.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                           dict(type='PackDetInputs')]
    ds_cfg.test_mode = False  # keep the annotations even for val/test
    dataset = DATASETS.build(ds_cfg)
    visualizer = VISUALIZERS.build(cfg.visualizer)
    visualizer.dataset_meta = dataset.metainfo
    os.makedirs(args.output_dir, exist_ok=True)
    indices = np.unique(np.linspace(0, len(dataset) - 1, min(args.num, len(dataset))).astype(int))
    bar = ProgressBar(len(indices))
    for i in indices:
        item = dataset[int(i)]
        img = item['inputs'].permute(1, 2, 0).numpy()[..., [2, 1, 0]]  # BGR -> RGB
        sample = item['data_samples'].numpy()
        gt = sample.gt_instances
        if isinstance(gt.get('bboxes', None), BaseBoxes):
            gt.bboxes = gt.bboxes.tensor
        sample.gt_instances = gt
        name = osp.basename(sample.img_path)
        visualizer.add_datasample(name, img, sample, draw_pred=False, show=False,
                                  out_file=osp.join(args.output_dir, f'{int(i):05d}_{name}'))
        bar.update()
    print(f'\n{len(indices)} pictures written to {args.output_dir}')


if __name__ == '__main__':
    try:
        main()
    except LmdbFormatError as e:  # a missing or damaged pack (truncated data.mdb, bad checksum): named
        raise SystemExit(f'error: {pack_error_message(e)}') from None
