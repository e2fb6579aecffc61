"""Decoding images to RGB uint8 arrays: simplejpeg for JPEG (it can decode straight at 1/2, 1/4, 1/8
size, which is most of the cost saved when the training size is small), PIL for everything else."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from ..errors import CompError


def read_image(path: str | Path, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB. With `min_size=(w, h)`, a JPEG may come back smaller than stored, but never
    smaller than (w, h): the caller resizes to the exact size."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CompError(f"{path}: cannot read image ({e.strerror}); check the file exists and is readable") from e
    if data[:2] == b"\xff\xd8":
        try:
            w, h = min_size or (0, 0)
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=w, min_height=h)
        except ValueError:
            pass  # unusual JPEG (CMYK, broken tail...): let PIL try
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises several types for broken files
        raise CompError(f"{path}: unreadable or corrupt image ({type(e).__name__}); replace or remove it") from e
