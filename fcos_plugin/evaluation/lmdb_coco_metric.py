"""COCO evaluation whose ground truth comes from a packed LMDB instead of the annotation JSON."""
from __future__ import annotations

from mmdet.datasets.api_wrappers import COCO
from mmdet.evaluation import CocoMetric
from mmdet.registry import METRICS

from ..datasets.lmdb_format import load_packed


def coco_api_from_lmdb(lmdb_path: str) -> COCO:
    """A pycocotools ``COCO`` index over a packed split: every image and annotation the source JSON had
    for the packed images (crowd regions, original ``area`` and boxes included)."""
    coco = COCO()
    coco.dataset = load_packed(lmdb_path).coco_dataset_dict()
    coco.createIndex()
    # mmdet's wrapper sets these aliases in __init__, which only indexes when given a file
    coco.img_ann_map, coco.cat_img_map = coco.imgToAnns, coco.catToImgs
    return coco


@METRICS.register_module()
class LmdbCocoMetric(CocoMetric):
    """mmdet's ``CocoMetric`` with ground truth read from the LMDB of an ``LmdbCocoDataset``.

    Args:
        lmdb_path: the packed split. By default it is taken from the evaluated dataset's metainfo, so a
            config needs only ``dict(type='LmdbCocoMetric', metric='bbox')``.
        Other arguments as ``CocoMetric`` (``ann_file`` still works and then wins).
    """

    def __init__(self, *args, lmdb_path: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lmdb_path = lmdb_path
        if self._coco_api is None and lmdb_path is not None:
            self._coco_api = coco_api_from_lmdb(lmdb_path)

    def compute_metrics(self, results: list) -> dict:
        """``CocoMetric.compute_metrics`` over the images of this evaluation, labels read in the
        dataset's class order.

        ``CocoMetric`` scores every image of its annotation file; on a full split that is the same set,
        but on a subset (``indices=...``, a quick check on a few images) the unseen images' objects
        would all count as missed. The set is taken anew at every evaluation.

        ``CocoMetric`` maps label i to the i-th selected category *in the file's order*
        (``get_cat_ids(cat_names=...)``), while ``LmdbCocoDataset`` gives label i to
        ``metainfo['classes'][i]``, so with reordered classes they would disagree: the categories are
        taken in the order of ``dataset_meta['classes']``.
        """
        self.img_ids = list(dict.fromkeys(gt['img_id'] for gt, _ in results))
        name_to_id = {c['name']: c['id'] for c in self._coco_api.dataset['categories']}
        self.cat_ids = [name_to_id[name] for name in self.dataset_meta['classes']]
        return super().compute_metrics(results)

    @CocoMetric.dataset_meta.setter
    def dataset_meta(self, dataset_meta: dict) -> None:
        self._dataset_meta = dataset_meta
        path = (dataset_meta or {}).get('lmdb_path')
        if self._coco_api is None and path:
            self.lmdb_path = path
            self._coco_api = coco_api_from_lmdb(path)
