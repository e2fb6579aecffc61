"""Writes that are never half-done: everything goes to a temporary sibling, then `os.replace`.

A crash (or Ctrl-C) mid-write leaves the previous file, or no file, never a truncated one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import CompError


def refuse_overwrite(path: Path | str, force: bool, what: str = "file") -> None:
    p = Path(path)
    if p.exists() and not force:
        raise CompError(f"{p}: {what} already exists; pass --force to replace it or choose another name")


@contextlib.contextmanager
def atomic_path(path: Path | str):
    """Yields a temporary path next to `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "w", **kw):
    """`open()` whose result appears at `path` only once the block has finished without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_dir(path: Path | str, force: bool = False):
    """Yields a temporary directory that becomes `path` when the block succeeds.

    An existing non-empty `path` is refused unless `force`, in which case it is replaced whole."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not force:
        raise CompError(f"{path}: folder exists and is not empty; pass --force to replace it or choose another")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
