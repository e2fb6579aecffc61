"""Decoding images to RGB uint8 arrays: simplejpeg for JPEG (it can decode straight at 1/2, 1/4, 1/8
size, which is most of the cost saved when the training size is small), PIL for everything else.
Photos are turned upright by their EXIF orientation, as a viewer (and whoever labelled them) shows them:
phones store many photos sideways with a tag saying so."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image, ImageOps

from ..errors import CompError

EXIF_ORIENTATION = 0x0112
# PIL's transpose for each EXIF orientation (the table ImageOps.exif_transpose uses); 1 is upright
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def _orientation(im: Image.Image) -> int:
    """An opened image's EXIF orientation; 1 (upright) when it has none or an invalid one."""
    value = im.getexif().get(EXIF_ORIENTATION, 1)
    return value if value in _UPRIGHT else 1


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation of a JPEG (1: upright, also when there is no EXIF block). The EXIF block sits
    in the first segments; only files that have one are parsed."""
    if data.find(b"Exif\x00\x00", 0, 1 << 16) < 0:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:
            return _orientation(im)
    except Exception:  # an unreadable EXIF block does not make the pixels unusable
        return 1


def read_image(path: str | Path, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB, upright. With `min_size=(w, h)`, a JPEG may come back smaller than stored, but
    never smaller than (w, h) once upright: the caller resizes to the exact size."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CompError(f"{path}: cannot read image ({e.strerror}); check the file exists and is readable") from e
    if data[:2] == b"\xff\xd8":
        orientation = jpeg_orientation(data)
        w, h = min_size or (0, 0)
        if orientation >= 5:  # stored with width and height swapped
            w, h = h, w
        try:
            img = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=w, min_height=h)
        except ValueError:
            pass  # unusual JPEG (CMYK, broken tail...): let PIL try
        else:
            if orientation == 1:
                return img
            return np.asarray(Image.fromarray(img).transpose(_UPRIGHT[orientation]))
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception as e:  # PIL raises several types for broken files
        raise CompError(f"{path}: unreadable or corrupt image ({type(e).__name__}); replace or remove it") from e


@dataclass(frozen=True)
class Header:
    """What a file says about its image without decoding the pixels."""
    format: str  # JPEG, PNG, ...
    mode: str  # PIL's colour mode: RGB, L (grayscale), RGBA, P (palette), CMYK, ...
    stored_size: tuple[int, int]  # (w, h) as stored
    orientation: int  # EXIF orientation, 1 = upright

    @property
    def size(self) -> tuple[int, int]:
        """(w, h) once upright: what comp trains on."""
        return self.stored_size[::-1] if self.orientation >= 5 else self.stored_size


def read_header(path: str | Path) -> Header:
    try:
        with Image.open(path) as im:
            return Header(im.format or "?", im.mode, im.size, _orientation(im))
    except Exception as e:  # PIL raises several types for broken files
        raise CompError(f"{path}: unreadable or corrupt image ({type(e).__name__}); replace or remove it") from e
