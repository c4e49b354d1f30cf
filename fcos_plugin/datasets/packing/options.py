"""What one pack is asked to do (:class:`PackOptions`) and the names of the files it reads and writes."""
from __future__ import annotations

import os.path as osp
from collections.abc import Callable
from dataclasses import dataclass

#: boxes may stick out of the image by this many pixels (annotation rounding) before they count as bad
DEFAULT_BBOX_TOLERANCE = 1.0


def split_paths(src_dir: str, split: str) -> tuple[str, str]:
    return (osp.join(src_dir, 'annotations', f'instances_{split}2017.json'),
            osp.join(src_dir, f'{split}2017'))


def target_path(target_dir: str, split: str) -> str:
    return osp.join(target_dir, f'{split}_lmdb')


def report_path(target_dir: str, split: str) -> str:
    return osp.join(target_dir, f'{split}_pack_report.json')


def work_prefix(split: str) -> str:
    """How the names of a pack's temporary (``tmp-*``) and superseded (``old-*``) directories begin."""
    return f'.{split}_lmdb.'


@dataclass(frozen=True)
class PackOptions:
    """The settings of one pack: the arguments of :func:`fcos_plugin.datasets.coco_packer.pack_coco`."""
    src_dir: str
    target_dir: str
    split: str
    with_segmentation: bool = False
    strict: bool = False
    overwrite: bool = False
    num_workers: int = 2
    bbox_tolerance: float = DEFAULT_BBOX_TOLERANCE
    map_size: int | None = None
    progress: bool = True
    log: Callable[[str], None] = print
    allow_outside_src: bool = False

    @property
    def ann_path(self) -> str:
        return split_paths(self.src_dir, self.split)[0]

    @property
    def img_dir(self) -> str:
        return split_paths(self.src_dir, self.split)[1]

    @property
    def final(self) -> str:
        """The pack directory, ``{target_dir}/{split}_lmdb``."""
        return target_path(self.target_dir, self.split)
