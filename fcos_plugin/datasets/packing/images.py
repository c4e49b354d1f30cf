"""Decoding an image file as a check: it reads whole (truncation and corruption are found), and its size,
taken as training decodes it (EXIF orientation applied, as cv2 does), fits its record."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

#: EXIF orientation tag. ``cv2.imdecode`` with ``IMREAD_COLOR`` -- how ``mmcv.imfrombytes`` and
#: ``LoadImageFromFile`` decode by default, hence how training sees an image -- applies it: values 2-8 flip
#: and/or rotate the pixels, and 5-8 swap width and height. Sizes are checked in that displayed frame.
EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = frozenset((5, 6, 7, 8))
#: formats whose EXIF orientation is taken from their EXIF block as cv2's JPEG decoder does; for any other
#: format carrying an orientation (rare) cv2 itself decodes the image once to learn the displayed size
_JPEG_FORMATS = frozenset(('JPEG', 'MPO'))


@dataclass(frozen=True)
class DecodedSize:
    """An image's size as stored and as decoded for training (EXIF orientation applied)."""
    stored: tuple[int, int]  # (width, height) of the encoded pixels
    orientation: int  # EXIF orientation, 1 (none) to 8
    decoded: tuple[int, int]  # (width, height) after the orientation, what training sees


def _jpeg_orientation(im: Image.Image) -> int:
    raw = im.info.get('exif')
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
        value = exif.get(EXIF_ORIENTATION)
    except Exception:  # an EXIF block PIL cannot parse is taken as no orientation
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _cv2_orientation(data: bytes, orientation: int) -> tuple[int, tuple[int, int]] | None:
    """``(orientation cv2 applies, decoded size)`` for a non-JPEG image whose metadata names an
    orientation: whether cv2 honours it there depends on its version, so ask it (two decodes, rare)."""
    import cv2
    buf = np.frombuffer(data, np.uint8)
    shown = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if shown is None:
        return None
    raw = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    applied = raw is None or raw.shape != shown.shape or not np.array_equal(raw, shown)
    return (orientation if applied else 1), (shown.shape[1], shown.shape[0])


def decoded_size(data: bytes) -> DecodedSize:
    """Decode ``data`` (at reduced DCT scale for JPEG: the whole entropy-coded stream is still read, so
    truncation and corruption raise, at a fraction of a full decode's cost) and return its size as stored
    and as training decodes it. Raises whatever PIL raises for data that does not decode."""
    with Image.open(io.BytesIO(data)) as im:
        stored, fmt = im.size, im.format
        im.draft('RGB', (max(1, stored[0] // 8), max(1, stored[1] // 8)))
        im.load()
        if fmt in _JPEG_FORMATS:
            orientation = _jpeg_orientation(im)
        else:
            try:
                value = im.getexif().get(EXIF_ORIENTATION)
            except Exception:
                value = None
            orientation = value if isinstance(value, int) and 2 <= value <= 8 else 1
    if orientation == 1:
        return DecodedSize(stored, 1, stored)
    if fmt in _JPEG_FORMATS:
        return DecodedSize(stored, orientation, stored[::-1] if orientation in _SWAPS_AXES else stored)
    from_cv2 = _cv2_orientation(data, orientation)
    if from_cv2 is not None:
        return DecodedSize(stored, *from_cv2)
    return DecodedSize(stored, orientation, stored[::-1] if orientation in _SWAPS_AXES else stored)


def _size_problem(size: DecodedSize, width: int, height: int, source: str) -> tuple[str, str] | None:
    """``(kind, message)`` when an image decoded as ``size`` does not fit the record's width/height."""
    if size.decoded == (width, height):
        return None
    (sw, sh), (dw, dh), o = size.stored, size.decoded, size.orientation
    if size.stored == (width, height):  # only possible when the orientation swaps the axes
        return 'exif_rotated_size', (
            f'image is stored as {sw}x{sh} but its EXIF orientation {o} rotates it to {dw}x{dh}, which is '
            f'how training decodes it; {source}\'s width/height must be the displayed size {dw}x{dh}, '
            'with the boxes drawn on the displayed image. Fix the record (and its boxes if they were drawn '
            'on the unrotated pixels), or remove the orientation tag from the file if they were')
    if o != 1:
        return 'bad_image', (f'image is {dw}x{dh} as decoded (stored {sw}x{sh}, EXIF orientation {o}) but '
                             f'{source} says {width}x{height}')
    return 'bad_image', f'image is {sw}x{sh} but {source} says {width}x{height}'


def _image_problem(data: bytes, width: int, height: int,
                   source: str) -> tuple[tuple[str, str] | None, DecodedSize | None]:
    try:
        size = decoded_size(data)
    except Exception as e:  # PIL raises many types for corrupt data
        return ('bad_image', f'cannot decode image ({type(e).__name__}: {e})'), None
    return _size_problem(size, width, height, source), size


def check_image(path: str, width: int, height: int
                ) -> tuple[bytes | None, tuple[str, str] | None, DecodedSize | None]:
    """Read an image file and decode it fully: ``(bytes, None, size)`` or ``(None, (kind, problem),
    size or None)``; sizes are compared in the frame training decodes the image in (EXIF orientation)."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return None, ('bad_image', 'image file is missing'), None
    except OSError as e:
        return None, ('bad_image', f'cannot read image file ({e.strerror})'), None
    except ValueError as e:  # a path Python cannot pass to the OS
        return None, ('bad_image', f'cannot open image file ({e})'), None
    problem, size = _image_problem(data, width, height, 'the JSON')
    return (None if problem else data), problem, size


def decode_problem(data: bytes, width: int, height: int, source: str = 'the JSON') -> str | None:
    """None if ``data`` decodes to a ``width`` x ``height`` image (as training decodes it, EXIF
    orientation applied), else what is wrong with it."""
    problem, _ = _image_problem(data, width, height, source)
    return None if problem is None else problem[1]
