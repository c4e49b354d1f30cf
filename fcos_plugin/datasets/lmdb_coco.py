"""``LmdbCocoDataset``: mmdet's ``CocoDataset`` read from a packed LMDB.

A drop-in for ``CocoDataset`` in any mmdet config: replace

    type='CocoDataset', ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/')

with ``type='LmdbCocoDataset', ann_file='train_lmdb'``. Pipelines are unchanged: each sample's ``img_path``
is an ``lmdb://`` URI which mmengine's fileio (hence ``LoadImageFromFile`` and the visualisation hooks)
reads through :class:`LmdbImageBackend`, opened lazily, read-only and without lock in each worker process.
Every image and segmentation record read is checked against its CRC32 checksum record: a damaged one raises
``DamagedPackError`` naming the pack, the key and the image id (in a DataLoader worker too: the DataLoader
re-raises it in the main process).

Unlike ``CocoDataset`` nothing is parsed into per-image Python dicts at start-up: the index is a handful of
column arrays, and ``get_data_info`` builds each sample's dict on demand with exactly ``CocoDataset``'s
rules. Construction at COCO train2017 scale takes well under a second and a few MB per process.
"""
from __future__ import annotations

import colorsys
import json
import os.path as osp

import numpy as np
from mmdet.datasets import BaseDetDataset
from mmdet.registry import DATASETS
from mmengine.fileio import BaseStorageBackend, register_backend

from .lmdb_format import (
    URI_SCHEME,
    LmdbFormatError,
    PackedCoco,
    image_uri,
    load_packed,
    read_record,
    seg_key,
    split_uri,
)


@register_backend('fcos_plugin_lmdb', prefixes=URI_SCHEME)
class LmdbImageBackend(BaseStorageBackend):
    """mmengine storage backend for ``lmdb://<lmdb dir>::<key>`` URIs (one env per process, cached).

    Values are checked against their checksum records (``DamagedPackError`` on a mismatch)."""

    def get(self, filepath) -> bytes:
        db, key = split_uri(str(filepath))
        value = read_record(db, key)
        if value is None:
            raise FileNotFoundError(f'{key.decode()!r} is not in the LMDB {db}')
        return value

    def get_text(self, filepath, encoding: str = 'utf-8') -> str:
        return self.get(filepath).decode(encoding)


def _palette(n: int) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours (golden-ratio hue walk)."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95))
            for i in range(n)]


@DATASETS.register_module()
class LmdbCocoDataset(BaseDetDataset):
    """COCO detection dataset stored in an LMDB written by ``tools/datasets/mscoco_packer.py``.

    Args:
        ann_file: the packed split directory (e.g. ``'train_lmdb'``), joined with ``data_root``.
        metainfo: optional ``classes`` (a subset/reordering of the packed category names) and ``palette``;
            by default all packed categories in their source order.
        with_mask: attach segmentations as ``instance['mask']`` (needs a pack made with
            ``--with-segmentation``). Defaults to whether the pack has them.
        Everything else as mmdet's ``CocoDataset`` / ``BaseDetDataset`` (``filter_cfg``, ``test_mode``,
        ``indices``, ``pipeline``, ...). ``data_prefix`` is ignored: images live in the LMDB.
    """

    METAINFO: dict = dict(classes=(), palette=[])

    def __init__(self, *args, ann_file: str = '', data_root: str | None = '',
                 metainfo: dict | None = None, with_mask: bool | None = None, **kwargs) -> None:
        self.lmdb_path = osp.abspath(osp.join(data_root or '', ann_file)) if ann_file else ''
        self._with_mask_arg = with_mask
        metainfo = dict(metainfo or {})
        try:
            self._open_pack(metainfo)
        except LmdbFormatError:
            # BaseDataset's lazy_init=True promises not to touch the annotations: mmdet's DetInferencer
            # builds the test set that way only to read its metainfo (palette), on machines that
            # need not hold the pack. The pack is opened (and its error raised) by full_init().
            if not kwargs.get('lazy_init', False):
                raise
            self._packed = None
            self.with_mask = bool(with_mask)
            # Without the pack the class names are unknown: no palette rather than an empty one, so
            # DetInferencer falls back to the checkpoint's (an empty list would override it).
            classes = metainfo.get('classes')
            metainfo.setdefault('palette', _palette(len(classes)) if classes else None)
        kwargs['serialize_data'] = False  # the index is already a few compact arrays
        super().__init__(*args, ann_file=ann_file, data_root=data_root, metainfo=metainfo, **kwargs)
        # after super(): mmengine would try to read a string metainfo value as a meta file.
        # Evaluators receive the metainfo, so LmdbCocoMetric finds its ground truth through this key.
        self._metainfo['lmdb_path'] = self.lmdb_path

    def _open_pack(self, metainfo: dict) -> None:
        """Open the pack and complete ``metainfo`` (in place) with its classes and a palette."""
        self._packed: PackedCoco = load_packed(self.lmdb_path)
        with_mask = self._with_mask_arg
        self.with_mask = self._packed.manifest['with_segmentation'] if with_mask is None else with_mask
        if self.with_mask and not self._packed.manifest['with_segmentation']:
            raise ValueError(f'{self.lmdb_path} was packed without segmentations; repack with '
                             '--with-segmentation or set with_mask=False.')
        names = [c['name'] for c in self._packed.categories]
        if not metainfo.get('classes'):  # absent, or METAINFO's empty default (lazy_init deferred)
            metainfo['classes'] = tuple(names)
        if not metainfo.get('palette'):
            metainfo['palette'] = _palette(len(metainfo['classes']))
        unknown = set(metainfo['classes']) - set(names)
        if unknown:
            raise ValueError(f'classes {sorted(unknown)} are not categories of {self.lmdb_path} '
                             f'(it has {names})')

    def full_init(self) -> None:
        """``BaseDataset.full_init``, opening the pack first if ``lazy_init`` deferred it."""
        if self._fully_initialized:
            return
        if self._packed is None:
            self._open_pack(self._metainfo)
        super().full_init()

    # -- index ----------------------------------------------------------------------------------------
    def load_data_list(self) -> np.ndarray:  # type: ignore[override]
        """Rows of the image table; per-sample dicts are built lazily by :meth:`get_data_info`."""
        name_to_id = {c['name']: c['id'] for c in self._packed.categories}
        self.cat_ids = [name_to_id[name] for name in self.metainfo['classes']]
        self.cat2label = {cat_id: i for i, cat_id in enumerate(self.cat_ids)}
        # category id -> label lookup table (-1: not a selected class)
        max_id = max([c['id'] for c in self._packed.categories] + [0])
        self._label_lut = np.full(max_id + 2, -1, np.int64)
        self._label_lut[self.cat_ids] = np.arange(len(self.cat_ids))
        return np.arange(self._packed.num_images)

    def filter_data(self) -> np.ndarray:  # type: ignore[override]
        """``CocoDataset.filter_data`` (``filter_empty_gt``, ``min_size``), vectorised."""
        rows = self.data_list
        if self.test_mode or self.filter_cfg is None:
            return rows
        c = self._packed.columns
        keep = np.ones(len(rows), bool)
        if self.filter_cfg.get('filter_empty_gt', False):
            # like COCO's cat_img_map: any annotation of a selected class counts, crowd ones too
            selected = self._label_lut[c['category_id']] >= 0
            has_cat = np.zeros(self._packed.num_images, bool)
            has_cat[self._packed.ann_image_rows()[selected]] = True
            keep &= has_cat[rows]
        min_size = self.filter_cfg.get('min_size', 0)
        keep &= np.minimum(c['width'][rows], c['height'][rows]) >= min_size
        return rows[keep]

    def get_data_info(self, idx: int) -> dict:
        """The sample dict ``CocoDataset.parse_data_info`` would give (with an ``lmdb://`` img_path)."""
        if not self._fully_initialized:
            self.full_init()
        row = int(self.data_list[idx])
        c = self._packed.columns
        width, height = int(c['width'][row]), int(c['height'][row])
        file_name = c['file_name'][row].decode()
        info = dict(img_path=image_uri(self.lmdb_path, file_name), img_id=int(c['image_id'][row]),
                    seg_map_path=None, height=height, width=width)
        if self.return_classes:
            info.update(text=self.metainfo['classes'], caption_prompt=self.caption_prompt,
                        custom_entities=True)
        start, count = int(c['ann_start'][row]), int(c['ann_count'][row])
        segs = self._segmentations(info['img_id']) if self.with_mask and count else None
        instances = []
        for j in range(start, start + count):
            x1, y1, w, h = (float(v) for v in c['bbox'][j])
            inter_w = max(0, min(x1 + w, width) - max(x1, 0))
            inter_h = max(0, min(y1 + h, height) - max(y1, 0))
            if inter_w * inter_h == 0 or c['area'][j] <= 0 or w < 1 or h < 1:
                continue
            label = int(self._label_lut[c['category_id'][j]])
            if label < 0:
                continue
            inst = dict(ignore_flag=int(c['iscrowd'][j]), bbox=[x1, y1, x1 + w, y1 + h],
                        bbox_label=label)
            if segs is not None and segs[j - start]:
                inst['mask'] = segs[j - start]
            instances.append(inst)
        info['instances'] = instances
        return info

    def _segmentations(self, image_id: int) -> list:
        return json.loads(read_record(self.lmdb_path, seg_key(image_id)))

    def _get_unserialized_subset(self, indices: list[int] | int):
        sub = super()._get_unserialized_subset(indices)
        return np.asarray(sub, dtype=np.int64)
