"""What a pack tells its user: the error that stops it, the problems it skipped, its report file
(``{target}/{split}_pack_report.json``) and the summary lines the command line prints."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from ...utils.fileio import write_json_atomic


class PackError(RuntimeError):
    """A problem that stops the pack (bad arguments, unreadable JSON, strict-mode problems)."""


@dataclass
class Problem:
    kind: str
    message: str
    image_id: int | None = None
    file_name: str | None = None
    ann_id: int | None = None
    action: str = 'skipped'

    def line(self) -> str:
        where = []
        if self.image_id is not None:
            where.append(f'image {self.image_id}' + (f' ({self.file_name})' if self.file_name else ''))
        if self.ann_id is not None:
            where.append(f'annotation {self.ann_id}')
        prefix = ', '.join(where) or 'dataset'
        return f'{prefix}: {self.message}; {self.action}'

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class PackResult:
    target: str
    num_images: int
    num_annotations: int
    num_crowd: int
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    bytes_written: int = 0
    report_path: str | None = None
    #: images whose EXIF orientation training applies (``image_id``, ``file_name``, ``orientation``,
    #: ``stored_size``, ``decoded_size``, ``packed``), in source order
    exif_oriented: list[dict] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.num_images / max(self.seconds, 1e-9)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_written / 1e6 / max(self.seconds, 1e-9)


def write_report(result: PackResult, manifest: dict) -> None:
    counts = Counter(p.kind for p in result.problems)
    report = dict(target=result.target, manifest=manifest, problem_counts=dict(counts),
                  problems=[p.to_dict() | dict(line=p.line()) for p in result.problems],
                  exif_oriented=result.exif_oriented)
    write_json_atomic(report, result.report_path)


def summarize(result: PackResult) -> Iterable[str]:
    yield (f'packed {result.num_images} images, {result.num_annotations} annotations '
           f'({result.num_crowd} crowd) into {result.target} in {result.seconds:.1f} s: '
           f'{result.images_per_s:.0f} images/s, {result.mb_per_s:.1f} MB/s')
    if result.problems:
        counts = Counter(p.kind for p in result.problems)
        yield (f'{len(result.problems)} problem(s) skipped ('
               + ', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))
               + f'); details in {result.report_path}')
    else:
        yield f'no problems found; report in {result.report_path}'
    if result.exif_oriented:
        n_packed = sum(e['packed'] for e in result.exif_oriented)
        yield (f'{len(result.exif_oriented)} image(s) carry an EXIF orientation ({n_packed} packed): '
               'training decodes them rotated or flipped, so their sizes were checked in that displayed '
               'frame and their boxes must be drawn in it too; listed under "exif_oriented" in '
               f'{result.report_path}')
