from . import transforms  # noqa: F401
from .coco_packer import PackError, pack_coco
from .lmdb_coco import LmdbCocoDataset, LmdbImageBackend
from .lmdb_format import DamagedPackError, LmdbFormatError, load_packed

__all__ = ['DamagedPackError', 'LmdbCocoDataset', 'LmdbImageBackend', 'LmdbFormatError', 'PackError',
           'load_packed', 'pack_coco']
