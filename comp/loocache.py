"""The ledger's leave-one-out estimates, kept between `comp estimate` calls.

The self-check estimates every scored submission from the others, twice (with the best five references and with
the best one); on a week's ledger that is most of an estimate's time, and it is the same for every candidate
until the ledger changes. So its estimates are kept in <ledger folder>/.estimate-cache.json, each under a
digest of everything its draws depend on: the answers, probabilities, known scores and labelled twin of the
submission and of each of its references, the class prior, the seed and number of draws, and the estimator's
own source. Anything changed is another key, so nothing stale is ever read.

The scores of the rest of the ledger are not in the key: they enter an estimate only through the winner's
curse (how lucky its references are, as the best of those scores), a shift per setting computed from the
draws' luck statistics. So the draws and those statistics are kept (estimate.Luck), and the shift is made
again for the ledger as it is now. A new score that does not displace any submission's references (most of
a week's: not among the best few) then leaves every other leave-one-out estimate reusable: the next
`comp estimate` makes two new ones, not all of them again, and gets what a fresh computation gets, to the bit.

Only the keys one call used are written back (one ledger state's worth), and a file that cannot be read is
rebuilt. Deleting it costs one slow estimate.
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


def _valid(value) -> bool:
    """A kept estimate as put() writes it: [[F1 draws, [weights, σ², β] or null], ...] of floats."""
    def floats(v) -> bool:
        return isinstance(v, list) and all(isinstance(x, float) for x in v)

    return isinstance(value, list) and bool(value) and all(
        isinstance(s, list) and len(s) == 2 and floats(s[0]) and s[0]
        and (s[1] is None or (isinstance(s[1], list) and len(s[1]) == 3 and all(floats(v) for v in s[1])))
        for s in value)


class LooCache:
    """Leave-one-out estimates (each setting's F1 draws and luck) by digest, read from and written back to
    `folder`/FILE."""

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
        ok = isinstance(raw, dict) and all(_valid(v) for v in raw.values())
        return raw if ok else {}

    def key(self, *parts) -> str:
        return digest(self.salt, *parts)

    def get(self, key: str) -> list[tuple[np.ndarray, tuple[np.ndarray, ...] | None]] | None:
        """The kept settings of an estimate, as put() had them, or None."""
        with self._lock:
            value = self.used.get(key) or self.old.get(key)
            if value is None:
                return None
            self.used[key] = value
            self.hits += 1
        return [(np.array(f1, float), None if luck is None else tuple(np.array(v, float) for v in luck))
                for f1, luck in value]

    def put(self, key: str, settings: list[tuple[np.ndarray, tuple[np.ndarray, ...] | None]]) -> None:
        """An estimate's settings: per setting its F1 draws and its luck statistics (estimate.Luck's arrays, in
        order; None where NEW is a reference). Floats as JSON writes them, which read back to the bit."""
        value = [[np.asarray(f1, float).tolist(), None if luck is None else [np.asarray(v, float).tolist() for v in luck]]
                 for f1, luck in settings]
        with self._lock:
            self.used[key] = value

    def save(self) -> None:
        """Writes back the keys this call used, atomically; a folder it cannot write to is left as it is."""
        if not self.used or self.used == self.old or not self.path.parent.is_dir():
            return
        try:
            with atomic_write(self.path) as fh:
                json.dump(self.used, fh)
        except OSError:
            pass  # a read-only ledger folder: the next call recomputes, nothing is lost
