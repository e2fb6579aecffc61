"""The ledger's leave-one-out estimates, kept between `comp estimate` calls.

The self-check estimates every scored submission from the others, twice (with the best five references and with
the best one); on a week's ledger that is most of an estimate's time, and it is the same for every candidate
until the ledger changes. So its estimates are kept in <ledger folder>/.estimate-cache.json, each under a
digest of everything it depends on: the answers, probabilities, known scores and labelled twin of the
submission and of each of its references, the scores the references were picked from (winner's curse), the
class prior, the seed and number of draws, and the estimator's own source. Anything changed is another key,
so nothing stale is ever read; only the keys one call used are written back (one ledger state's worth), and a
file that cannot be read is rebuilt. Deleting it costs one slow estimate.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from .fileio import atomic_write

FILE = ".estimate-cache.json"


def digest(*parts) -> str:
    """sha256 of arrays (dtype, shape and values; strings by their text) and other values (by repr)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(f"{p.dtype.str}{p.shape}".encode())
            h.update("\n".join(map(str, p.ravel())).encode() if p.dtype == object else np.ascontiguousarray(p).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\x00")
    return h.hexdigest()


ESTIMATOR_SOURCE = ("estimate.py", "selfcal.py", "data/labels.py")  # read as files: this module imports none of them


def code_digest() -> str:
    """The estimator's source: a changed method is a new key (the estimate, the self-check, the label coding)."""
    here = Path(__file__).parent
    return digest(*((here / name).read_bytes() for name in ESTIMATOR_SOURCE))


class LooCache:
    """Leave-one-out estimates (F1, interval) by digest, read from and written back to `folder`/FILE."""

    def __init__(self, folder: Path | str):
        self.path = Path(folder) / FILE
        self.salt = digest(code_digest())
        self.old = self._read()
        self.used: dict[str, list[float]] = {}
        self.hits = 0
        self.contents: dict[int, str] = {}  # a submission's digest by id(): hashed once per call, not per candidate
        self._lock = threading.Lock()  # the leave-one-out's threads read and write it

    def _read(self) -> dict:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        ok = isinstance(raw, dict) and all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, float) for x in v)
                                           for v in raw.values())
        return raw if ok else {}

    def key(self, *parts) -> str:
        return digest(self.salt, *parts)

    def get(self, key: str) -> tuple[float, float, float] | None:
        with self._lock:
            value = self.used.get(key) or self.old.get(key)
            if value is None:
                return None
            self.used[key] = value
            self.hits += 1
            return tuple(value)

    def put(self, key: str, f1: float, lo: float, hi: float) -> None:
        with self._lock:
            self.used[key] = [float(f1), float(lo), float(hi)]

    def save(self) -> None:
        """Writes back the keys this call used, atomically; a folder it cannot write to is left as it is."""
        if not self.used or self.used == self.old or not self.path.parent.is_dir():
            return
        try:
            with atomic_write(self.path) as fh:
                json.dump(self.used, fh)
        except OSError:
            pass  # a read-only ledger folder: the next call recomputes, nothing is lost
