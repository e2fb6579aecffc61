"""A submission *set*: `NAME.csv` (ImageID,ans: what the leaderboard takes), `NAME.probs.npy` (float32, one
row of 18 class probabilities per CSV row) and `NAME.json` (its provenance: how it was made).

One validated reader and one writer for the set, so every command gives the same one-line error for the
same bad file:
- the CSV: exactly the columns ImageID,ans, at least one row, each ImageID once, ans an integer class;
- the probabilities: shape (rows, 18), a float array, finite, non-negative, rows summing to 1 (±1e-3),
  and the CSV's answer a most probable class of its row (unless the provenance says the answers were
  chosen otherwise);
- the provenance: a typed record (`Provenance`); blend methods must be known.
The writer commits the set as a unit: probabilities, then the CSV, then the JSON, each atomically; the
JSON is written last and holds the sha256 of the other two, so a set half-replaced by a killed command
(new probabilities beside the old CSV) is recognised on read and refused, never silently paired.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import metrics
from .data import labels as L
from .errors import CompError
from .fileio import atomic_write, refuse_overwrite, sha256_file, write_bytes
from .registry import Registry

PROVENANCE_VERSION = 2
KINDS = ("predict", "blend", "fit", "external")  # external: a CSV comp did not make (no JSON, or another tool's)


def probs_path(csv: Path | str) -> Path:
    p = Path(csv)
    return p.with_name(p.name.removesuffix(".csv") + ".probs.npy")


def meta_path(csv: Path | str) -> Path:
    p = Path(csv)
    return p.with_name(p.name.removesuffix(".csv") + ".json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------- provenance
@dataclass
class Provenance:
    """How a submission was made. `comp predict` and `comp ensemble` write it; the estimator, the ledger and
    reports read it. Unknown to a CSV from elsewhere: kind `external`."""
    kind: str = "external"  # predict | blend | fit | external
    data: str | None = None  # dataset root whose eval/info.csv the rows follow
    runs: list[str] = field(default_factory=list)  # predict, fit: run folders, in order
    ckpt: str = "best"  # predict, fit: best | last checkpoint of each fold
    tta: str | None = None  # predict, fit: TTA view set of the eval predictions
    checkpoints: list[str] = field(default_factory=list)  # predict: every checkpoint averaged
    method: str | None = None  # blend: a name in comp.blend.METHODS
    inputs: list[str] = field(default_factory=list)  # blend: the input CSVs, in order
    weights: list[float] = field(default_factory=list)  # blend: per input; fit: per run
    weighting: str | None = None  # fit: greedy (Caruana selection) | mean (selection lost out of fold)
    bias: list[float] = field(default_factory=list)  # fit: per-class log-prior shift (empty: none)
    answers_from_probs: bool = True  # the CSV's answers are the argmax of NAME.probs.npy
    stats: dict[str, Any] = field(default_factory=dict)  # informative only: timings, models, OOF table
    files: dict[str, str | None] = field(default_factory=dict)  # sha256 of the committed csv and probs
    version: int = PROVENANCE_VERSION

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: Any, source: str) -> Provenance:
        """A validated record from a parsed NAME.json (this version's, or the untyped one comp wrote before)."""
        if not isinstance(raw, dict):
            raise CompError(f"{source}: expected a JSON object describing the submission, got {type(raw).__name__}; "
                            "delete the file (the CSV stays usable) or rewrite it with the command that made it")
        if "kind" not in raw:
            raw = _upgrade(raw)
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise CompError(f"{source}: unknown provenance field {unknown[0]!r}; was it written by a newer comp?")
        checks = {"kind": str, "data": (str, type(None)), "runs": list, "ckpt": str, "tta": (str, type(None)),
                  "checkpoints": list, "method": (str, type(None)), "inputs": list, "weights": list,
                  "weighting": (str, type(None)), "bias": list, "answers_from_probs": bool, "stats": dict,
                  "files": dict, "version": int}
        for key, tp in checks.items():
            if key in raw and not isinstance(raw[key], tp):
                raise CompError(f"{source}: provenance field {key!r} has the wrong type ({type(raw[key]).__name__})")
        p = cls(**raw)
        if p.kind not in KINDS:
            raise CompError(f"{source}: provenance kind {p.kind!r} unknown; choose one of {', '.join(KINDS)}")
        for key in ("weights", "bias"):
            values = getattr(p, key)
            if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise CompError(f"{source}: provenance field {key!r} must hold finite numbers")
        if not all(isinstance(v, str) for v in p.runs + p.inputs + p.checkpoints):
            raise CompError(f"{source}: provenance paths (runs, inputs, checkpoints) must be strings")
        if p.kind == "blend":
            from .blend import METHODS

            if p.method not in METHODS:
                raise CompError(f"{source}: blend method {p.method!r} is unknown to this comp (it knows "
                                f"{', '.join(METHODS)}); was the file written by another version?")
            if not p.inputs or (p.weights and len(p.weights) != len(p.inputs)):
                raise CompError(f"{source}: a blend needs its inputs and one weight per input")
        if p.kind == "fit" and (not p.runs or len(p.weights) != len(p.runs)):
            raise CompError(f"{source}: a fitted blend needs its runs and one weight per run")
        return p


def _upgrade(raw: dict) -> dict:
    """The untyped JSON of comp before provenance version 2 → this version's fields."""
    raw = dict(raw)
    method = raw.pop("ensemble", None)
    out: dict[str, Any] = {"data": raw.pop("data", None)}
    if method == "fit":
        out.update(kind="fit", runs=raw.pop("runs", []), weights=raw.pop("weights", []),
                   weighting=raw.pop("weighting", "greedy"), bias=raw.pop("bias", []), tta=raw.pop("tta", None))
    elif method is not None:
        out.update(kind="blend", method=method, inputs=raw.pop("inputs", []), weights=raw.pop("weights", []))
    elif "runs" in raw:
        out.update(kind="predict", runs=raw.pop("runs"), ckpt=raw.pop("ckpt", "best"), tta=raw.pop("tta", None),
                   checkpoints=raw.pop("checkpoints", []))
    out["stats"] = raw  # whatever else it said (timings, models, OOF table)
    return out


# ---------------------------------------------------------------------------------------------- sets
@dataclass
class Submission:
    path: Path
    ids: np.ndarray  # ImageID strings, in file order
    ans: np.ndarray  # int64 class ids
    probs: np.ndarray | None = None  # (N, 18) float32, same order, when NAME.probs.npy exists
    prov: Provenance = field(default_factory=Provenance)

    def __len__(self) -> int:
        return len(self.ids)

    def reorder(self, ids: np.ndarray) -> Submission:
        """The same submission in the order of `ids` (which must hold the same set)."""
        pos = positions(self.ids, ids)
        probs = None if self.probs is None else self.probs[pos]
        return Submission(self.path, self.ids[pos], self.ans[pos], probs, self.prov)


def positions(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each of `wanted` sits in `keys` (all must be there)."""
    return pd.Series(np.arange(len(keys)), index=keys)[wanted].to_numpy()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CompError(f"{path}: not a readable JSON file ({type(e).__name__}); delete it (the CSV stays usable) "
                        "or rewrite it with the command that made the submission") from None


def read_provenance(csv: Path | str) -> Provenance:
    """The submission's provenance (NAME.json), validated; kind `external` when there is none."""
    mp = meta_path(csv)
    return Provenance.from_json(_read_json(mp), str(mp)) if mp.is_file() else Provenance()


def _read_csv(path: Path) -> pd.DataFrame:
    from .data.reader import ragged_rows

    if not path.is_file():
        raise CompError(f"{path}: submission not found")
    try:
        ragged = ragged_rows(path)
        if ragged:
            line, n, expected = ragged[0]
            raise CompError(f"{path}:{line}: {n} fields where the header has {expected} ({len(ragged)} such rows); "
                            "each row needs one value per header column (ImageID,ans)")
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])  # as written: pandas renames a repeated column
    except pd.errors.EmptyDataError:
        raise CompError(f"{path}: the file is empty; a submission has the header ImageID,ans and one row per image") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, csv.Error) as e:
        where = str(e).splitlines()[0][:120] if isinstance(e, pd.errors.ParserError) else type(e).__name__
        raise CompError(f"{path}: not a readable CSV ({where}); expected columns ImageID,ans") from None
    # by name, as a leaderboard reads them: in any order, other columns (a saved pandas index, a confidence)
    # ignored. comp itself always writes exactly ImageID,ans.
    names = [c.strip() for c in header]
    if names.count("ImageID") != 1 or names.count("ans") != 1:
        raise CompError(f"{path}: columns are {','.join(header)}; a submission needs one column ImageID and one "
                        "column ans")
    df.columns = names
    df = df[["ImageID", "ans"]]
    if df.empty:
        raise CompError(f"{path}: no rows under the header; a submission lists every eval image")
    return df


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for empty, truncated or foreign files
        raise CompError(f"{path}: not a readable .npy array ({type(e).__name__}); delete it or rewrite it with the "
                        "command that made the submission") from None
    if not isinstance(arr, np.ndarray):
        raise CompError(f"{path}: holds several arrays; expected one (rows, 18) array of probabilities")
    return arr


def check_probs(probs: np.ndarray, ans: np.ndarray | None, where: str, from_probs: bool = True) -> np.ndarray:
    """Validated (N, 18) float32 class probabilities; with `ans`, each answer must be a most probable class."""
    if probs.dtype.kind != "f":
        raise CompError(f"{where}: probabilities of dtype {probs.dtype}; expected floats")
    n = len(ans) if ans is not None else len(probs)
    if probs.shape != (n, L.N_CLASSES):
        raise CompError(f"{where}: shape {probs.shape}, expected ({n}, 18): one row of 18 class probabilities per CSV row")
    p = probs.astype(np.float64)
    bad = ~np.isfinite(p).all(1)
    if bad.any():
        raise CompError(f"{where}: row {int(np.argmax(bad))} holds NaN or infinity ({int(bad.sum())} such rows)")
    bad = (p < 0).any(1)
    if bad.any():
        raise CompError(f"{where}: row {int(np.argmax(bad))} holds a negative probability ({int(bad.sum())} such rows); "
                        "save probabilities (softmax), not logits or log-probabilities")
    sums = p.sum(1)
    bad = np.abs(sums - 1) > 1e-3
    if bad.any():
        i = int(np.argmax(bad))
        raise CompError(f"{where}: row {i} sums to {sums[i]:.4g}, not 1 ({int(bad.sum())} such rows); save "
                        "probabilities (softmax), not logits or scores")
    if ans is not None and from_probs:
        off = p[np.arange(n), ans] < p.max(1) - 1e-6
        if off.any():
            i = int(np.argmax(off))
            raise CompError(f"{where}: row {i}: the CSV answers class {ans[i]} but the most probable class is "
                            f"{int(p[i].argmax())} ({int(off.sum())} such rows); the probabilities belong to another "
                            "CSV — rewrite the set, or delete the .probs.npy")
    return probs.astype(np.float32, copy=False)


def read_submission(path: Path | str, need_probs: bool = False) -> Submission:
    """Reads and validates a submission set: the CSV, its probabilities and provenance when present."""
    path = Path(path)
    df = _read_csv(path)
    ans = pd.to_numeric(df["ans"], errors="coerce")
    bad = np.flatnonzero(~(ans.notna() & (ans % 1 == 0) & ans.between(0, L.N_CLASSES - 1)).to_numpy())
    if len(bad):
        raise CompError(f"{path}:{bad[0] + 2}: ans {df['ans'].iat[bad[0]]!r} is not a class 0-17 "
                        f"({len(bad)} such rows); every ans must be an integer class id")
    empty = np.flatnonzero((df["ImageID"].str.strip() == "").to_numpy())
    if len(empty):
        raise CompError(f"{path}:{empty[0] + 2}: empty ImageID ({len(empty)} such rows)")
    dup = df["ImageID"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise CompError(f"{path}:{i + 2}: ImageID {df['ImageID'].iat[i]} appears more than once "
                        f"({int(dup.sum())} duplicates); each image must be listed once")
    ans = ans.to_numpy(np.int64)
    prov = read_provenance(path)
    pp = probs_path(path)
    if prov.files:  # a set comp committed: its sidecars must be the ones written with this CSV
        stale = prov.files.get("csv") != sha256_file(path) or \
            prov.files.get("probs") != (sha256_file(pp) if pp.is_file() else None)
        if stale:
            raise CompError(f"{path}: its .json / .probs.npy were not written with this CSV (a command was interrupted "
                            "while replacing the set?); rerun that command with --force, or delete the .json and "
                            ".probs.npy to use the CSV alone")
    probs = None
    if pp.is_file():
        probs = check_probs(_load_npy(pp), ans, str(pp), prov.answers_from_probs)
    elif need_probs:
        raise CompError(f"{path}: no probabilities file {pp.name}; soft blending needs the .probs.npy that "
                        "`comp predict` writes beside the CSV (or use --method vote / per-task)")
    return Submission(path, df["ImageID"].to_numpy(dtype=object), ans, probs, prov)


def dataset_root(sub: Submission) -> Path | None:
    """The dataset root a submission was predicted on: the one its JSON names when it is on this machine, else
    the one in the project's data/ whose eval/info.csv lists its ImageIDs (a CSV from other code has no JSON)."""
    from .data.reader import find_root

    if sub.prov.data and (Path(sub.prov.data) / "eval" / "info.csv").is_file():
        return Path(sub.prov.data)
    return find_root(sub.ids)


def check_same_ids(subs: list[Submission]) -> None:
    """All submissions must cover the same ImageIDs (in any order)."""
    first = set(subs[0].ids)
    for s in subs[1:]:
        other = set(s.ids)
        if other != first:
            missing, extra = sorted(first - other), sorted(other - first)
            parts = [f"{what} (e.g. {', '.join(ids[:3])})" for ids, what in
                     ((missing, f"it lacks {len(missing)} of them"),
                      (extra, f"it has {len(extra)} that {subs[0].path.name} does not")) if ids]
            raise CompError(f"{s.path}: ImageIDs differ from {subs[0].path.name}'s: {' and '.join(parts)}; "
                            "compare submissions of the same eval set")


def check_against_ids(sub: Submission, expected: np.ndarray, source: str, hint: str = "") -> None:
    """A submission for the leaderboard lists every eval ImageID once, in the eval set's order (`source`'s;
    `hint` says what that source is)."""
    check_same_ids([Submission(Path(source), np.asarray(expected, dtype=object), np.zeros(len(expected), np.int64)),
                    sub])
    if not np.array_equal(sub.ids, expected):
        raise CompError(f"{sub.path}: ImageIDs are not in {source}'s order{hint}; the leaderboard expects that order")


def write_submission(path: Path | str, ids, ans, probs: np.ndarray | None = None, prov: Provenance | None = None,
                     force: bool = False) -> Path:
    """Commits NAME.csv (+ NAME.probs.npy) and NAME.json as one set (see the module docstring); refuses to
    overwrite without force and refuses probabilities that fail the reader's checks."""
    path = Path(path)
    if path.suffix != ".csv":
        raise CompError(f"{path}: a submission file name ends in .csv")
    refuse_overwrite(path, force, "submission")
    ans = np.asarray(ans, dtype=np.int64)
    prov = dataclasses.replace(prov or Provenance())
    buf = io.StringIO()
    pd.DataFrame({"ImageID": list(ids), "ans": ans}).to_csv(buf, index=False)
    csv_bytes = buf.getvalue().encode()
    npy_bytes = None
    if probs is not None:
        probs = check_probs(np.asarray(probs), ans, f"{path.name}: the probabilities to write", prov.answers_from_probs)
        out = io.BytesIO()
        np.save(out, probs)
        npy_bytes = out.getvalue()
    prov.files = {"csv": sha256_bytes(csv_bytes), "probs": None if npy_bytes is None else sha256_bytes(npy_bytes)}
    if npy_bytes is not None:
        write_bytes(probs_path(path), npy_bytes)
    elif probs_path(path).exists():  # a stale probabilities file would pair with the wrong answers
        probs_path(path).unlink()
    write_bytes(path, csv_bytes)
    with atomic_write(meta_path(path)) as fh:  # last: the commit record of the set
        json.dump(prov.to_json(), fh, indent=1, default=str)
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


# ------------------------------------------------------------------------------------- labelled twins
@dataclass
class Twin:
    """A CSV's labelled twin: what its model(s) predicted on held-out train images (validation / out-of-fold,
    same distribution as eval), combined the way the CSV was, with the true labels. The estimator measures
    how good a CSV is on it."""
    probs: np.ndarray | None
    ans: np.ndarray
    y: np.ndarray
    images: np.ndarray  # train image keys, the rows' order
    note: str

    def subset(self, images: np.ndarray) -> Twin:
        pos = positions(self.images, images)
        return Twin(None if self.probs is None else self.probs[pos], self.ans[pos], self.y[pos], images, self.note)


# provenance kind → twin(prov, with_probs, depth) -> Twin | None. Each producer registers its own, built with
# the code that made its CSVs (predict.py, ensemble.py), so a new blend method or TTA view cannot drift apart
# from the estimator's copy of it.
TWINS = Registry("provenance kind", "kind")


def twin_of(prov: Provenance, with_probs: bool, depth: int = 0) -> Twin | None:
    """The labelled twin of a CSV made as `prov` says; None when it has none (an external CSV, the last
    checkpoint, runs whose held-out files are gone)."""
    make = TWINS.get(prov.kind)
    return make(prov, with_probs, depth) if make is not None and depth < 4 else None


def twin_of_file(csv: Path | str, depth: int = 0) -> Twin | None:
    """twin_of for an input CSV named by a blend; None when it or its provenance cannot be read."""
    csv = Path(csv)
    try:
        return twin_of(read_provenance(csv), probs_path(csv).is_file(), depth) if csv.is_file() else None
    except CompError:
        return None


def common_images(image_lists: list[np.ndarray]) -> np.ndarray:
    common = set(image_lists[0]).intersection(*image_lists[1:])
    return np.array(sorted(common), dtype=object)
