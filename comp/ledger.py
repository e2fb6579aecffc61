"""The ledger of scored submissions: `submissions/ledger.csv`, one row per CSV sent to the leaderboard.

Append-only: a new row is written with the whole file to a temporary sibling and renamed over the old
one, so a crash leaves the ledger exactly as it was. `comp estimate` takes its references from here.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import CompError
from .fileio import atomic_path, atomic_write, sha256_file
from .submission import check_against_ids, dataset_root, meta_path, probs_path, read_submission

COLUMNS = ["name", "sha256", "time", "public_f1", "public_acc", "note"]
DEFAULT_DIR = Path("submissions")
DAILY_LIMIT = 10


@dataclass
class Entry:
    name: str
    sha256: str
    time: str  # ISO 8601, UTC
    public_f1: float
    public_acc: float | None
    note: str

    def path(self, folder: Path) -> Path:
        return folder / self.name


def read_ledger(folder: Path | str = DEFAULT_DIR) -> list[Entry]:
    path = Path(folder) / "ledger.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and list(rows[0]) != COLUMNS:
        raise CompError(f"{path}: columns are {','.join(rows[0])}; expected {','.join(COLUMNS)}")
    out = []
    for i, r in enumerate(rows, start=2):
        try:
            out.append(Entry(r["name"], r["sha256"], r["time"], float(r["public_f1"]),
                             float(r["public_acc"]) if r["public_acc"] else None, r["note"]))
        except (TypeError, ValueError):
            raise CompError(f"{path}:{i}: unreadable row; fix or remove it") from None
    return out


def _check_score(value: float | None, name: str, high: float) -> None:
    if value is not None and not 0 <= value <= high:
        raise CompError(f"{name} {value}: must lie in 0..{high:g}" + (" (percent, as the leaderboard shows it)"
                                                                     if high == 100 else ""))


def add(file: Path | str, public_f1: float, public_acc: float | None = None, note: str = "",
        folder: Path | str = DEFAULT_DIR, now: datetime | None = None, data: Path | str | None = None) -> Entry:
    """Copies FILE (+ its .probs.npy and .json) into the ledger folder and appends its row. Refused, with
    nothing written: a CSV the leaderboard would refuse (checked against `data`'s eval/info.csv, else the
    eval set its provenance names, else the dataset in data/ listing its ImageIDs, else the ledger's first entry),
    and a CSV already in the ledger."""
    file, folder = Path(file), Path(folder)
    _check_score(public_f1, "--public-f1", 1.0)
    _check_score(public_acc, "--public-acc", 100.0)
    sub = read_submission(file)
    entries = read_ledger(folder)
    _check_rows(sub, entries, folder, data)
    digest = sha256_file(file)
    same = next((e for e in entries if e.sha256 == digest), None)
    if same is not None:
        raise CompError(f"{file}: the same file is already in the ledger as {same.name} (public F1 "
                        f"{same.public_f1:.4f}, {same.time}); a resubmission scores the same and would count twice")
    dest = folder / file.name
    if dest.exists() and dest.resolve() != file.resolve() and sha256_file(dest) != digest:
        raise CompError(f"{dest}: another file of that name is already in {folder}; rename {file.name} first")
    folder.mkdir(parents=True, exist_ok=True)
    if dest.resolve() != file.resolve():  # the provenance last: it commits the copied set
        for src, dst in ((probs_path(file), probs_path(dest)), (file, dest), (meta_path(file), meta_path(dest))):
            if src.is_file():
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
            elif dst.is_file():
                dst.unlink()
    entry = Entry(file.name, digest, (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
                  float(public_f1), None if public_acc is None else float(public_acc), note)
    _write(folder, entries + [entry])
    return entry


def _check_rows(sub, entries: list[Entry], folder: Path, data: Path | str | None) -> None:
    """The rows the leaderboard expects: every eval ImageID once, in info.csv's order."""
    from .data.reader import read_info_ids

    root = data or dataset_root(sub)
    if root is not None and (Path(root) / "eval" / "info.csv").is_file():
        check_against_ids(sub, read_info_ids(root), str(Path(root) / "eval" / "info.csv"))
    elif data is not None:
        raise CompError(f"{data}: no eval/info.csv here; --data is the dataset root whose eval set was scored")
    elif entries:  # no eval set at hand: every scored CSV lists the same images as the first one did
        first = read_submission(entries[0].path(folder))
        check_against_ids(sub, first.ids, entries[0].name, hint=" (the ledger's first entry; with --data ROOT, "
                                                                "eval/info.csv is the reference instead)")


def _write(folder: Path, entries: list[Entry]) -> None:
    with atomic_write(folder / "ledger.csv", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for e in entries:
            w.writerow([e.name, e.sha256, e.time, f"{e.public_f1:.6g}",
                        "" if e.public_acc is None else f"{e.public_acc:.6g}", e.note])


def used_today(entries: list[Entry], now: datetime | None = None) -> int:
    """Submissions made since the last UTC midnight (when Kaggle-style daily limits reset)."""
    now = now or datetime.now(timezone.utc)
    return sum(datetime.fromisoformat(e.time).astimezone(timezone.utc).date() == now.date() for e in entries)
