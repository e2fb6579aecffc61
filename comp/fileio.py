"""Writes that are never half-done: everything goes to a temporary sibling, then `os.replace`.

A crash (or Ctrl-C) mid-write leaves the previous file, or no file, never a truncated one. Temporary names
carry the writer's process id (`.NAME.<pid>.<random>.tmp`), so the temporaries of a killed writer are
recognised and swept by the next write of the same file. Files and folders get the modes the umask gives
(as `open()` would), not mkstemp's private 0600, so teammates can read the team's submissions.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import CompError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()


def refuse_overwrite(path: Path | str, force: bool, what: str = "file") -> None:
    p = Path(path)
    if p.exists() and not force:
        raise CompError(f"{p}: {what} already exists; pass --force to replace it or choose another name")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(path: Path) -> None:
    """Removes temporaries of `path` left by writers that no longer run (killed mid-write)."""
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                if tmp.is_dir():
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: Path | str):
    """Yields a temporary path next to `path`; renames it onto `path` only if the block succeeds."""
    path = Path(path)
    if not path.parent.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)
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


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def temp_name(path: Path) -> Path:
    """A fresh temporary name beside `path`, swept like the others if its writer dies."""
    return path.with_name(f"{_temp_prefix(path)}{os.urandom(4).hex()}.tmp")


def temp_dir(path: Path) -> Path:
    """A new empty temporary folder beside `path` (same file system, so it can be renamed onto it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~UMASK)
    return tmp


@contextlib.contextmanager
def atomic_dir(path: Path | str, force: bool = False):
    """Yields a temporary directory that becomes `path` when the block succeeds.

    An existing non-empty `path` is refused unless `force`, in which case it is replaced whole."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not force:
        raise CompError(f"{path}: folder exists and is not empty; pass --force to replace it or choose another")
    tmp = temp_dir(path)
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


def sha256_file(path: Path | str) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (submissions, weights, ledger copies)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
