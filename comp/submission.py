"""Submission files: `NAME.csv` (ImageID,ans), `NAME.probs.npy` (float32, one row of 18 class
probabilities per CSV row) and `NAME.json` (how it was made).

Predict writes through here; ensemble, estimate and the ledger read through here, so every command gives
the same one-line error for a bad CSV. Writes are atomic and never replace an existing file without force.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics
from .data import labels as L
from .errors import CompError
from .fileio import atomic_path, atomic_write, refuse_overwrite


def probs_path(csv: Path | str) -> Path:
    p = Path(csv)
    return p.with_name(p.name.removesuffix(".csv") + ".probs.npy")


def meta_path(csv: Path | str) -> Path:
    p = Path(csv)
    return p.with_name(p.name.removesuffix(".csv") + ".json")


@dataclass
class Submission:
    path: Path
    ids: np.ndarray  # ImageID strings, in file order
    ans: np.ndarray  # int64 class ids
    probs: np.ndarray | None = None  # (N, 18) float32, same order, when NAME.probs.npy exists
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def reorder(self, ids: np.ndarray) -> Submission:
        """The same submission in the order of `ids` (which must hold the same set)."""
        pos = positions(self.ids, ids)
        probs = None if self.probs is None else self.probs[pos]
        return Submission(self.path, self.ids[pos], self.ans[pos], probs, self.meta)


def positions(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of `wanted` sits in `keys` (all must be there)."""
    return pd.Series(np.arange(len(keys)), index=keys)[wanted].to_numpy()


def read_meta(csv: Path | str) -> dict:
    """The submission's NAME.json (what made it), or {} when there is none."""
    mp = meta_path(csv)
    return json.loads(mp.read_text()) if mp.is_file() else {}


def read_submission(path: Path | str, need_probs: bool = False) -> Submission:
    """Reads and validates a submission CSV (and its probabilities / metadata when present)."""
    path = Path(path)
    if not path.is_file():
        raise CompError(f"{path}: submission not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas raises several types on broken files
        raise CompError(f"{path}: not a readable CSV ({type(e).__name__}); expected columns ImageID,ans") from None
    if list(df.columns[:2]) != ["ImageID", "ans"] or len(df.columns) != 2:
        raise CompError(f"{path}: columns are {','.join(df.columns)}; a submission has exactly ImageID,ans")
    ans = pd.to_numeric(df["ans"], errors="coerce")
    bad = np.flatnonzero(~(ans.notna() & (ans % 1 == 0) & ans.between(0, L.N_CLASSES - 1)).to_numpy())
    if len(bad):
        raise CompError(f"{path}:{bad[0] + 2}: ans {df['ans'].iat[bad[0]]!r} is not a class 0-17 "
                        f"({len(bad)} such rows); every ans must be an integer class id")
    dup = df["ImageID"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise CompError(f"{path}:{i + 2}: ImageID {df['ImageID'].iat[i]} appears more than once "
                        f"({int(dup.sum())} duplicates); each image must be listed once")
    probs = None
    pp = probs_path(path)
    if pp.is_file():
        probs = np.load(pp)
        if probs.shape != (len(df), L.N_CLASSES):
            raise CompError(f"{pp}: shape {probs.shape}, expected ({len(df)}, 18) to match {path.name}")
    elif need_probs:
        raise CompError(f"{path}: no probabilities file {pp.name}; soft blending needs the .probs.npy that "
                        "`comp predict` writes beside the CSV (or use --method vote / per-task)")
    return Submission(path, df["ImageID"].to_numpy(dtype=object), ans.to_numpy(np.int64), probs, read_meta(path))


def check_same_ids(subs: list[Submission]) -> None:
    """All submissions must cover the same ImageIDs (in any order)."""
    first = set(subs[0].ids)
    for s in subs[1:]:
        other = set(s.ids)
        if other != first:
            missing, extra = sorted(first - other), sorted(other - first)
            raise CompError(f"{s.path}: ImageIDs differ from {subs[0].path.name}'s: {len(missing)} missing "
                            f"(e.g. {', '.join(missing[:3]) or '-'}), {len(extra)} extra "
                            f"(e.g. {', '.join(extra[:3]) or '-'}); compare submissions of the same eval set")


def check_against_info(sub: Submission, info_ids: np.ndarray) -> None:
    """A submission for the leaderboard lists every info.csv ImageID once, in info.csv's order."""
    check_same_ids([Submission(Path("info.csv"), np.asarray(info_ids, dtype=object), np.zeros(len(info_ids), np.int64)),
                    sub])
    if not np.array_equal(sub.ids, info_ids):
        raise CompError(f"{sub.path}: ImageIDs are not in info.csv's order; the leaderboard expects that order")


def write_submission(path: Path | str, ids, ans, probs: np.ndarray | None = None, meta: dict | None = None,
                     force: bool = False) -> Path:
    """Writes NAME.csv (+ NAME.probs.npy, NAME.json), each atomically; refuses to overwrite without force."""
    path = Path(path)
    if path.suffix != ".csv":
        raise CompError(f"{path}: a submission file name ends in .csv")
    refuse_overwrite(path, force, "submission")
    ans = np.asarray(ans, dtype=np.int64)
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float32)
        with atomic_path(probs_path(path)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, probs)
    elif probs_path(path).exists():  # a stale probabilities file would pair with the wrong answers
        probs_path(path).unlink()
    if meta is not None:
        with atomic_write(meta_path(path)) as fh:
            json.dump(meta, fh, indent=1, default=str)
    with atomic_write(path, newline="") as fh:
        pd.DataFrame({"ImageID": list(ids), "ans": ans}).to_csv(fh, index=False)
    return path


def score(ids, ans, truth: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Public / private macro F1 and accuracy of answers against an answer key (ImageID, ans, Usage):
    the leaderboard, simulated for synthetic and benchmark sets."""
    t = truth.set_index("ImageID")
    missing = set(ids) - set(t.index)
    if missing:
        raise CompError(f"the answer key lacks {len(missing)} of the submission's ImageIDs "
                        f"(e.g. {sorted(missing)[0]}); is it the same eval set?")
    t = t.loc[list(ids)]
    return metrics.leaderboard(np.asarray(ans), t["ans"].to_numpy(), t["Usage"].to_numpy())
