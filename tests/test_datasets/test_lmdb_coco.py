"""LmdbCocoDataset and LmdbCocoMetric against mmdet's CocoDataset / CocoMetric on the same tiny COCO."""
from __future__ import annotations

import json
import os.path as osp

import lmdb
import numpy as np
import pytest
import torch
from mmdet.datasets import CocoDataset
from mmdet.evaluation import CocoMetric
from mmdet.structures import DetDataSample
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData
from torch.utils.data import DataLoader

import fcos_plugin  # noqa: F401
from fcos_plugin.datasets import LmdbCocoDataset, LmdbFormatError
from fcos_plugin.evaluation import LmdbCocoMetric

init_default_scope('mmdet')

TEST_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 320), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor')),
]


def _pair(tiny_coco, packed, split='val', **kwargs):
    ref = CocoDataset(data_root=tiny_coco, ann_file=f'annotations/instances_{split}2017.json',
                      data_prefix=dict(img=f'{split}2017/'), **kwargs)
    ours = LmdbCocoDataset(data_root=packed, ann_file=f'{split}_lmdb', **kwargs)
    return ref, ours


@pytest.mark.parametrize('split', ['val', 'train'])
@pytest.mark.parametrize('kwargs', [
    dict(test_mode=True),
    dict(filter_cfg=None),
    dict(filter_cfg=dict(filter_empty_gt=True, min_size=32)),
    dict(filter_cfg=dict(filter_empty_gt=False, min_size=500)),
    dict(filter_cfg=dict(filter_empty_gt=True), metainfo=dict(classes=('person', 'dog', 'zebra'))),
    dict(indices=[3, 1, 4]),
])
def test_samples_equal_coco_dataset(tiny_coco, tiny_coco_packed, split, kwargs):
    ref, ours = _pair(tiny_coco, tiny_coco_packed, split, **kwargs)
    assert len(ours) == len(ref) > 0
    assert ours.metainfo['classes'] == ref.metainfo['classes']
    assert ours.cat_ids == ref.cat_ids
    for i in range(len(ref)):
        a, b = ref.get_data_info(i), ours.get_data_info(i)
        assert osp.basename(b['img_path']) == osp.basename(a['img_path'])
        assert b['img_path'].startswith('lmdb://')
        for key in ('img_id', 'height', 'width'):
            assert a[key] == b[key]
        strip = lambda insts: [{k: v for k, v in d.items() if k != 'mask'} for d in insts]  # noqa
        assert strip(b['instances']) == strip(a['instances'])
        assert [d.get('mask') for d in b['instances']] == [d.get('mask') for d in a['instances']]


def test_filter_keeps_crowd_only_images_like_coco(tiny_coco, tiny_coco_packed):
    # filter_empty_gt with classes whose only annotations may be crowd: same rule as COCO's cat_img_map
    ref, ours = _pair(tiny_coco, tiny_coco_packed, 'val',
                      filter_cfg=dict(filter_empty_gt=True), metainfo=dict(classes=('person',)))
    assert [ours.get_data_info(i)['img_id'] for i in range(len(ours))] == \
        [ref.get_data_info(i)['img_id'] for i in range(len(ref))]


def test_pipeline_output_equals_file_based(tiny_coco, tiny_coco_packed):
    ref, ours = _pair(tiny_coco, tiny_coco_packed, 'val', test_mode=True, pipeline=TEST_PIPELINE)
    for i in (0, 7, 49):
        a, b = ref[i], ours[i]
        assert torch.equal(a['inputs'], b['inputs'])
        assert torch.equal(a['data_samples'].gt_instances.bboxes.tensor,
                           b['data_samples'].gt_instances.bboxes.tensor)


def test_two_worker_dataloader_reads_everything(tiny_coco_packed):
    ds = LmdbCocoDataset(data_root=tiny_coco_packed, ann_file='train_lmdb', test_mode=True,
                         pipeline=TEST_PIPELINE)
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True,
                        collate_fn=pseudo_collate)
    for _ in range(2):  # the second epoch reuses the workers and their LMDB handles
        ids = [s.img_id for batch in loader for s in batch['data_samples']]
        assert sorted(ids) == sorted(ds.get_data_info(i)['img_id'] for i in range(len(ds)))


def _fake_predictions(ds, rng) -> list[DetDataSample]:
    """Detections near the ground truth plus false positives, with random scores."""
    samples = []
    for i in range(len(ds)):
        info = ds.get_data_info(i)
        boxes = np.array([d['bbox'] for d in info['instances']] or np.zeros((0, 4)), np.float32)
        labels = np.array([d['bbox_label'] for d in info['instances']], np.int64)
        boxes = boxes + rng.normal(0, 4, boxes.shape).astype(np.float32)
        fp = rng.uniform(0, 200, (5, 2)).astype(np.float32)
        fp = np.concatenate([fp, fp + rng.uniform(10, 150, (5, 2)).astype(np.float32)], 1)
        boxes = np.concatenate([boxes, fp])
        # false positives of random *categories*, labelled the way this dataset labels them
        fp_cats = np.sort(ds.cat_ids)[rng.integers(0, len(ds.cat_ids), 5)]
        labels = np.concatenate([labels, [list(ds.cat_ids).index(c) for c in fp_cats]]).astype(np.int64)
        s = DetDataSample(metainfo=dict(img_id=info['img_id'],
                                        ori_shape=(info['height'], info['width'])))
        s.pred_instances = InstanceData(
            bboxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels),
            scores=torch.from_numpy(rng.uniform(0.05, 1, len(boxes))).float())
        samples.append(s.to_dict())
    return samples


def test_metric_equals_coco_metric_with_ann_file(tiny_coco, tiny_coco_packed):
    ds = LmdbCocoDataset(data_root=tiny_coco_packed, ann_file='val_lmdb', test_mode=True)
    preds = _fake_predictions(ds, np.random.default_rng(0))

    ref = CocoMetric(ann_file=osp.join(tiny_coco, 'annotations', 'instances_val2017.json'))
    ours = LmdbCocoMetric()  # ground truth found through the dataset's metainfo
    results = []
    for metric in (ref, ours):
        metric.dataset_meta = ds.metainfo
        metric.process({}, preds)
        results.append(metric.evaluate(len(preds)))
    assert results[0]['coco/bbox_mAP'] > 0.1
    assert results[0] == results[1]
    # crowd regions are part of the ground truth the metric sees
    assert sum(a['iscrowd'] for a in ours._coco_api.dataset['annotations']) == 5


@pytest.mark.parametrize('classes', [('zebra', 'person', 'dog'), ('dog', 'person')])
def test_metric_follows_reordered_and_subset_classes(tiny_coco, tiny_coco_packed, classes):
    """Label i is ``classes[i]`` in the dataset, the metric scores it as that category: the same
    detections score what mmdet's CocoDataset + CocoMetric give them, whatever the class order."""
    ref_ds, ds = _pair(tiny_coco, tiny_coco_packed, test_mode=True, metainfo=dict(classes=classes))
    # label i is classes[i]: the objects of an image carry the names of their packed categories
    id_to_name = {c['id']: c['name'] for c in ds._packed.categories}
    anns = ds._packed.coco_dataset_dict()['annotations']
    for i in range(3):
        info = ds.get_data_info(i)
        names = [id_to_name[a['category_id']] for a in anns if a['image_id'] == info['img_id']]
        assert sorted(classes[inst['bbox_label']] for inst in info['instances']) == \
            sorted(n for n in names if n in classes)
    results = []
    for dataset, metric in ((ref_ds, CocoMetric(ann_file=osp.join(tiny_coco, 'annotations',
                                                                   'instances_val2017.json'))),
                            (ds, LmdbCocoMetric())):
        metric.dataset_meta = dataset.metainfo
        preds = _fake_predictions(dataset, np.random.default_rng(0))
        metric.process({}, preds)
        results.append(metric.evaluate(len(preds)))
    assert results[0]['coco/bbox_mAP'] > 0.05
    assert results[0] == results[1]


def test_metric_recomputes_the_evaluated_images_each_time(tiny_coco_packed):
    """One metric evaluating different image subsets (a val loop over a growing subset, say) scores
    each evaluation on the images it saw."""
    ds = LmdbCocoDataset(data_root=tiny_coco_packed, ann_file='val_lmdb', test_mode=True)
    preds = _fake_predictions(ds, np.random.default_rng(0))
    metric = LmdbCocoMetric()
    metric.dataset_meta = ds.metainfo
    scores = []
    for subset in (preds[:10], preds):
        metric.process({}, subset)
        scores.append(metric.evaluate(len(subset)))
    fresh = LmdbCocoMetric()
    fresh.dataset_meta = ds.metainfo
    fresh.process({}, preds)
    assert scores[1] == fresh.evaluate(len(preds))


def test_not_a_pack_is_a_clear_error(tiny_coco, tmp_path):
    with pytest.raises(LmdbFormatError, match='not a packed LMDB.*pack it first'):
        LmdbCocoDataset(data_root=tiny_coco, ann_file='annotations/instances_val2017.json')
    missing = (f"'{tmp_path}/val_lmdb' does not exist. Pack the split first "
               rf'\(tools/datasets/mscoco_packer.py .* --target-data-dir {tmp_path} --split-name val ')
    with pytest.raises(LmdbFormatError, match=missing):
        LmdbCocoDataset(data_root=str(tmp_path), ann_file='val_lmdb')
    env = lmdb.open(str(tmp_path / 'foreign'))
    with env.begin(write=True) as txn:
        txn.put(b'hello', b'world')
    env.close()
    with pytest.raises(LmdbFormatError, match='no manifest'):
        LmdbCocoDataset(data_root=str(tmp_path), ann_file='foreign')


def test_incompatible_format_version_is_a_clear_error(tiny_coco, tmp_path):
    from fcos_plugin.datasets import pack_coco
    r = pack_coco(tiny_coco, str(tmp_path), 'val', progress=False, log=lambda s: None)
    env = lmdb.open(r.target)
    with env.begin(write=True) as txn:
        manifest = json.loads(txn.get(b'__manifest__'))
        manifest['format_version'] = 999
        txn.put(b'__manifest__', json.dumps(manifest).encode())
    env.close()
    with pytest.raises(LmdbFormatError, match='format version 999.*Repack'):
        LmdbCocoDataset(data_root=str(tmp_path), ann_file='val_lmdb')


def test_unknown_class_subset_is_a_clear_error(tiny_coco_packed):
    with pytest.raises(ValueError, match='unicorn'):
        LmdbCocoDataset(data_root=tiny_coco_packed, ann_file='val_lmdb',
                        metainfo=dict(classes=('person', 'unicorn')))


def test_lazy_init_defers_the_pack_and_full_init_completes_the_metainfo(tiny_coco_packed, tmp_path):
    """lazy_init=True (what mmdet's DetInferencer uses to read a palette) must not need the pack, must
    not invent an empty palette (it would override the checkpoint's: DetInferencer's pictures then fail
    on 'palette should not be less than num_classes'), and full_init() later gives exactly what an
    eager build gives."""
    import shutil
    root = tmp_path / 'late'
    lazy = LmdbCocoDataset(data_root=str(root), ann_file='val_lmdb', lazy_init=True)
    assert lazy.metainfo['palette'] is None and not lazy.metainfo['classes']
    with pytest.raises(LmdbFormatError, match='val_lmdb'):
        lazy.full_init()  # still missing: the error names the pack
    shutil.copytree(osp.join(tiny_coco_packed, 'val_lmdb'), root / 'val_lmdb')
    lazy.full_init()
    eager = LmdbCocoDataset(data_root=str(root), ann_file='val_lmdb')
    assert lazy.metainfo['classes'] == eager.metainfo['classes'] and len(eager.metainfo['classes']) == 80
    assert lazy.metainfo['palette'] == eager.metainfo['palette']
    assert len(lazy) == len(eager) and lazy[0]['img_id'] == eager[0]['img_id']
    named = LmdbCocoDataset(data_root=str(tmp_path / 'none'), ann_file='val_lmdb', lazy_init=True,
                            metainfo=dict(classes=('person', 'dog')))
    assert len(named.metainfo['palette']) == 2
