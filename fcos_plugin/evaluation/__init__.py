from .lmdb_coco_metric import LmdbCocoMetric, coco_api_from_lmdb

__all__ = ['LmdbCocoMetric', 'coco_api_from_lmdb']
