"""Decode once, train many epochs: every image resized to the training size, stored as uint8.

`disk` keeps the images in a memmap file under the cache folder, keyed by the files (path, size, mtime)
and the target size, so later epochs, folds, runs and `comp predict` at the same size decode nothing, and
DataLoader workers share the pages instead of copying them. `memory` keeps them in RAM for one process.
`none` decodes every time (the plain way; what the throughput benchmark compares against).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from .. import ui
from ..fileio import atomic_path, atomic_write
from .images import read_image

CACHE_VERSION = 2  # 2: photos turned upright by their EXIF orientation
CACHE_MODES = ("disk", "memory", "none")  # data.cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("COMP_CACHE_DIR") or Path.home() / ".cache" / "comp")


def load_resized(path: str, size: tuple[int, int]) -> np.ndarray:
    """Decode (at reduced scale when the file is much larger) and resize to exactly (w, h), uint8 HWC."""
    w, h = size
    img = read_image(path, min_size=(w, h))
    if img.shape[1] != w or img.shape[0] != h:
        shrinking = img.shape[1] >= w and img.shape[0] >= h
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


class ImageStore:
    """len() images of one size; `store[i]` is an (h, w, 3) uint8 array."""

    def __init__(self, paths: list[str], size: tuple[int, int], array: np.ndarray | None = None,
                 file: Path | None = None):
        self.paths, self.size, self.file = list(paths), (int(size[0]), int(size[1])), file
        self._array = array

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.size[1], self.size[0], 3)

    @property
    def array(self) -> np.ndarray | None:
        if self._array is None and self.file is not None:
            self._array = np.memmap(self.file, dtype=np.uint8, mode="r", shape=self.shape)
        return self._array

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        arr = self.array
        return load_resized(self.paths[i], self.size) if arr is None else arr[i]

    def __getstate__(self):
        # A memmap-backed store travels to workers as its file name, not its pixels.
        state = self.__dict__.copy()
        if self.file is not None:
            state["_array"] = None
        return state


def cache_key(paths: list[str], size: tuple[int, int]) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION} {size[0]}x{size[1]}\n".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _fill(out: np.ndarray, paths: list[str], size: tuple[int, int], workers: int, desc: str) -> None:
    def one(i: int) -> None:
        out[i] = load_resized(paths[i], size)

    # simplejpeg and cv2 release the GIL, so threads decode in parallel without copying results around.
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in ui.track(pool.map(one, range(len(paths))), desc, total=len(paths)):
            pass


def build_store(paths: list[str], size: tuple[int, int], mode: str = "disk", cache_dir: Path | str | None = None,
                workers: int = 2, desc: str = "caching images") -> ImageStore:
    size = (int(size[0]), int(size[1]))
    if mode == "none":
        return ImageStore(paths, size)
    if mode == "memory" or not paths:
        arr = np.empty((len(paths), size[1], size[0], 3), dtype=np.uint8)
        _fill(arr, paths, size, workers, desc)
        return ImageStore(paths, size, array=arr)
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    file, meta = folder / f"{key}.u8", folder / f"{key}.json"
    if not (file.is_file() and meta.is_file()):
        with atomic_path(file) as tmp:
            arr = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(paths), size[1], size[0], 3))
            _fill(arr, paths, size, workers, desc)
            arr.flush()
            del arr
        with atomic_write(meta) as fh:
            json.dump({"size": size, "count": len(paths), "first": paths[:1]}, fh)
    return ImageStore(paths, size, file=file)
