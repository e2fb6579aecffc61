"""Reads a competition dataset root into DataFrames, validating as it goes.

    ROOT/train/train.csv            id,gender,race,age,path
    ROOT/train/images/<path>/       mask1..mask5, incorrect_mask, normal  (.jpg/.jpeg/.png)
    ROOT/eval/info.csv              ImageID,ans
    ROOT/eval/images/<ImageID>
    ROOT/eval_truth.csv             ImageID,ans,Usage  (synthetic and benchmark sets only)

`scan_train` / `scan_eval` collect every problem they find (for `comp data check`);
`load_train` / `load_eval` raise one `CompError` with one line per kind of problem.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CompError
from . import labels as L

TRAIN_COLUMNS = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS = ("ImageID", "ans")
TRUTH_COLUMNS = ("ImageID", "ans", "Usage")
MIN_AGE, MAX_AGE = 0, 120


@dataclass(frozen=True)
class Problem:
    kind: str  # what went wrong, in words; problems are grouped by it
    where: str  # file, folder or file:row
    fix: str  # what the user can do


def problems_error(problems: list[Problem], examples: int = 3) -> CompError:
    """One line per kind of problem: where (first few), what, how many, what to do."""
    by_kind: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_kind[p.kind].append(p)
    lines = []
    for kind, ps in by_kind.items():
        where = ", ".join(p.where for p in ps[:examples]) + (f" and {len(ps) - examples} more" if len(ps) > examples else "")
        lines.append(f"{where}: {kind} — {ps[0].fix}")
    return CompError(*lines)


OS_CLUTTER = {"thumbs.db", "desktop.ini", "ehthumbs.db"}  # what Windows Explorer leaves in image folders


def _is_hidden(name: str) -> bool:
    # macOS leaves ._mask1.jpg and .DS_Store beside the real images, Windows Thumbs.db and desktop.ini
    return name.startswith(".") or name.lower() in OS_CLUTTER


def ragged_rows(path: Path) -> list[tuple[int, int, int]]:
    """(line, fields, header fields) of each row whose field count differs from the header's: pandas would
    silently turn an extra first field into an index, or fill a missing one."""
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        rows = csv.reader(fh)
        header = next(rows, [])
        return [(i, len(r), len(header)) for i, r in enumerate(rows, start=2) if r and len(r) != len(header)]


def _read_csv(path: Path, columns: tuple[str, ...], problems: list[Problem]) -> pd.DataFrame | None:
    if not path.is_file():
        problems.append(Problem("file not found", str(path), f"expected a CSV with columns {','.join(columns)}"))
        return None
    try:
        ragged = ragged_rows(path)
        if ragged:
            line, n, expected = ragged[0]
            problems.append(Problem(f"row has {n} fields, the header {expected} ({len(ragged)} such rows)",
                                    f"{path}:{line}", "fix the row (a comma too many or too few?)"))
            return None
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as e:  # pandas raises many kinds for a broken CSV
        why = str(e).splitlines()[0][:120] if str(e) else ""
        problems.append(Problem(f"unreadable CSV ({type(e).__name__}{': ' + why if why else ''})", str(path),
                                "check the file is a UTF-8 CSV"))
        return None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        problems.append(Problem(f"missing column(s) {','.join(missing)} (has {','.join(df.columns)})", str(path),
                                f"the header must be {','.join(columns)}"))
        return None
    return df


def parse_folder_name(name: str) -> tuple[str, str, str, int] | str:
    """`<id>_<gender>_<race>_<age>` → (id, gender, race, age), or a string saying what is wrong."""
    parts = name.split("_")
    if len(parts) != 4 or not all(parts):
        return "folder name is not <id>_<gender>_<race>_<age>"
    pid, gender, race, age = parts
    if gender.lower() not in L.GENDER_TO_ID:
        return f"unknown gender word {gender!r} (expected male or female)"
    try:
        age_i = int(age)
    except ValueError:
        return f"age {age!r} is not an integer"
    return pid, gender.lower(), race, age_i


def _scan_person_dir(folder: Path, problems: list[Problem]) -> dict[str, str]:
    """stem → file name of each shot in a person's folder; records unknown, missing and duplicated shots."""
    shots: dict[str, list[str]] = defaultdict(list)
    for entry in os.scandir(folder):
        if _is_hidden(entry.name) or not entry.is_file():
            continue
        stem, ext = os.path.splitext(entry.name)
        if ext.lower() not in L.IMAGE_EXTS or stem not in L.STEM_TO_MASK:
            problems.append(Problem("unknown image file (expected mask1-5, incorrect_mask, normal as .jpg/.jpeg/.png)",
                                    str(folder / entry.name), "rename or remove it"))
            continue
        if entry.stat().st_size == 0:
            problems.append(Problem("empty image file (0 bytes)", str(folder / entry.name),
                                    "replace it with the real photo or drop the person"))
        shots[stem].append(entry.name)
    for stem in L.MASK_STEMS:
        if stem not in shots:
            problems.append(Problem(f"person is missing the {stem} shot", str(folder), "add the image or drop the person"))
        elif len(shots[stem]) > 1:
            problems.append(Problem("duplicated shot (same stem, several extensions)",
                                    f"{folder}/{'+'.join(sorted(shots[stem]))}", "keep exactly one file per shot"))
    # in MASK_STEMS order, whatever the file system lists first: row positions must be reproducible
    return {stem: sorted(shots[stem])[0] for stem in L.MASK_STEMS if stem in shots}


def scan_train(root: Path | str, bins: L.AgeBins = L.AgeBins(),
               relabel: Path | str | None = None) -> tuple[pd.DataFrame, list[Problem]]:
    """Every train image that could be read (one row each) and every problem found."""
    root = Path(root)
    problems: list[Problem] = []
    csv_path, img_dir = root / "train" / "train.csv", root / "train" / "images"
    meta = _read_csv(csv_path, TRAIN_COLUMNS, problems)
    if not img_dir.is_dir():
        problems.append(Problem("image folder not found", str(img_dir), "point --data at a dataset root holding train/"))
    if meta is None or not img_dir.is_dir():
        return _empty_train(), problems

    folders = {e.name for e in os.scandir(img_dir) if e.is_dir() and not _is_hidden(e.name)}
    seen_paths: set[str] = set()
    rows = []
    for i, r in enumerate(meta.itertuples(index=False), start=2):  # row 1 is the header
        where = f"{csv_path}:{i}"
        if r.path in seen_paths:
            problems.append(Problem("path listed twice in train.csv", where, "remove the duplicate row"))
            continue
        seen_paths.add(r.path)
        parsed = parse_folder_name(r.path)
        if isinstance(parsed, str):
            problems.append(Problem(parsed, f"{where} ({r.path})", "rename the folder and its train.csv row"))
            continue
        fid, fgender, _, fage = parsed
        if r.gender.lower() not in L.GENDER_TO_ID:
            problems.append(Problem(f"unknown gender word {r.gender!r}", where, "use male or female"))
            continue
        try:
            age = int(r.age)
        except ValueError:
            problems.append(Problem(f"age {r.age!r} is not an integer", where, "fix the age column"))
            continue
        if not MIN_AGE <= age <= MAX_AGE:
            problems.append(Problem(f"age {age} is not a plausible age ({MIN_AGE}-{MAX_AGE})", where,
                                    "fix the age in train.csv and the folder name"))
            continue
        if (fid, fgender, fage) != (r.id, r.gender.lower(), age):
            problems.append(Problem("train.csv row disagrees with its folder name", f"{where} ({r.path})",
                                    "make id, gender and age match the folder name"))
            continue
        if r.path not in folders:
            problems.append(Problem("train.csv names a folder that does not exist", f"{where} ({r.path})",
                                    "add the folder or remove the row"))
            continue
        shots = _scan_person_dir(img_dir / r.path, problems)
        for stem, name in shots.items():
            rows.append((str(img_dir / r.path / name), f"{r.path}/{name}", r.id, r.gender.lower(), r.race, age, stem))
    for name in sorted(folders - seen_paths):
        problems.append(Problem("image folder not listed in train.csv", str(img_dir / name),
                                "add a train.csv row or remove the folder"))
    ids = meta["id"][meta["path"].isin(folders)]
    for pid in sorted(set(ids[ids.duplicated()])):
        problems.append(Problem("person id used by several folders", f"{csv_path} (id {pid})", "give each person one id"))

    df = pd.DataFrame(rows, columns=["path", "image", "person", "gender", "race", "age", "stem"])
    df["mask"] = df["stem"].map(L.STEM_TO_MASK).astype(np.int64)
    if relabel is not None:
        df = apply_relabel(df, Path(relabel), problems)
    return _derive(df, bins), problems


def _empty_train() -> pd.DataFrame:
    df = pd.DataFrame(columns=["path", "image", "person", "gender", "race", "age", "stem", "mask"])
    return _derive(df.astype({"age": np.int64, "mask": np.int64}), L.AgeBins())


def _derive(df: pd.DataFrame, bins: L.AgeBins) -> pd.DataFrame:
    df = df.copy()
    df["gender_id"] = df["gender"].map(L.GENDER_TO_ID).astype(np.int64)
    df["age_group"] = np.asarray(bins.group(df["age"].to_numpy(np.int64)), dtype=np.int64).reshape(-1)
    df["label"] = np.asarray(L.encode(df["mask"].to_numpy(), df["gender_id"].to_numpy(),
                                      df["age_group"].to_numpy()), dtype=np.int64).reshape(-1)
    return df.reset_index(drop=True)


_MASK_WORDS = {**L.STEM_TO_MASK, "wear": 0, "incorrect": 1, "0": 0, "1": 1, "2": 2}


def apply_relabel(df: pd.DataFrame, path: Path, problems: list[Problem]) -> pd.DataFrame:
    """Known label fixes. CSV columns: `id` (a person) or `image` (a path under train/images, e.g.
    000001_female_Asian_45/normal.jpg), then any of `gender`, `age`, `mask`; an empty cell keeps the value.
    `mask` takes wear/incorrect/normal, a shot name or 0-2, and only on image rows."""
    fixes = _read_csv(path, (), problems)
    if fixes is None:
        return df
    if not {"id", "image"} & set(fixes.columns) or not {"gender", "age", "mask"} & set(fixes.columns):
        problems.append(Problem("relabel CSV needs an id or image column and a gender, age or mask column",
                                str(path), "see `comp data check --help`"))
        return df
    df = df.copy()
    for i, r in enumerate(fixes.to_dict("records"), start=2):
        where = f"{path}:{i}"
        pid, image = r.get("id", ""), r.get("image", "")
        sel = (df["person"] == pid) if pid else (df["image"] == image)
        if not sel.any():
            problems.append(Problem("relabel row matches no train image", where, "check the id / image path"))
            continue
        gender, age, mask = (str(r.get(k, "")).strip() for k in ("gender", "age", "mask"))
        if gender:
            if gender.lower() not in L.GENDER_TO_ID:
                problems.append(Problem(f"unknown gender word {gender!r}", where, "use male or female"))
                continue
            df.loc[sel, "gender"] = gender.lower()
        if age:
            if not age.lstrip("-").isdigit():
                problems.append(Problem(f"age {age!r} is not an integer", where, "fix the age cell"))
                continue
            df.loc[sel, "age"] = int(age)
        if mask:
            if pid or mask not in _MASK_WORDS:
                problems.append(Problem(f"bad mask fix {mask!r}", where,
                                        "mask fixes go on image rows, as wear/incorrect/normal or 0-2"))
                continue
            df.loc[sel, "mask"] = _MASK_WORDS[mask]
    return df


def load_train(root: Path | str, bins: L.AgeBins = L.AgeBins(), relabel: Path | str | None = None) -> pd.DataFrame:
    """One row per train image: path, image (relative key), person, gender, race, age, stem, mask,
    gender_id, age_group, label. Raises CompError listing every kind of problem."""
    df, problems = scan_train(root, bins, relabel)
    if problems:
        raise problems_error(problems)
    if df.empty:
        raise CompError(f"{Path(root) / 'train'}: no train images found; run `comp data check` on it")
    return df


def scan_eval(root: Path | str) -> tuple[pd.DataFrame, list[Problem]]:
    root = Path(root)
    problems: list[Problem] = []
    info_path, img_dir = root / "eval" / "info.csv", root / "eval" / "images"
    info = _read_csv(info_path, EVAL_COLUMNS, problems)
    if info is None:
        return pd.DataFrame(columns=["ImageID", "path"]), problems
    dup = info["ImageID"].duplicated()
    for i in np.flatnonzero(dup.to_numpy())[:50]:
        problems.append(Problem("ImageID listed twice", f"{info_path}:{i + 2}", "each eval image must appear once"))
    entries = {e.name: e for e in os.scandir(img_dir)} if img_dir.is_dir() else {}
    present = {name for name, e in entries.items() if e.is_file() and e.stat().st_size > 0}
    for i in np.flatnonzero(info["ImageID"].isin(set(entries) - present).to_numpy()):
        problems.append(Problem("eval image is empty (0 bytes) or not a file", f"{img_dir / info['ImageID'].iat[i]}",
                                "restore the image from the competition data"))
    missing = ~info["ImageID"].isin(entries)
    for i in np.flatnonzero(missing.to_numpy()):
        problems.append(Problem("info.csv ImageID has no image in eval/images", f"{info_path}:{i + 2} "
                                f"({info['ImageID'].iat[i]})", "restore the image from the competition data"))
    df = pd.DataFrame({"ImageID": info["ImageID"], "path": [str(img_dir / x) for x in info["ImageID"]]})
    return df, problems


def read_info_ids(root: Path | str) -> np.ndarray:
    """The ImageIDs of ROOT/eval/info.csv, in order (the images themselves need not be here)."""
    problems: list[Problem] = []
    path = Path(root) / "eval" / "info.csv"
    info = _read_csv(path, EVAL_COLUMNS, problems)
    if problems:
        raise problems_error(problems)
    return info["ImageID"].to_numpy(dtype=object)


def find_root(ids, under: Path | str = "data") -> Path | None:
    """The dataset root in the project's data/ folder (data/ itself or a folder in it) whose eval/info.csv lists
    exactly these ImageIDs, the first by name; None if none does. For a CSV that does not say which dataset it
    was predicted on (one made by other code has no comp JSON)."""
    under = Path(under)
    if not under.is_dir():
        return None
    wanted = set(ids)
    for root in [under, *sorted(p for p in under.iterdir() if p.is_dir())]:
        if not (root / "eval" / "info.csv").is_file():
            continue
        try:
            found = read_info_ids(root)
        except CompError:
            continue  # a broken dataset is `comp data check`'s to report, not the reason to refuse a CSV
        if len(found) == len(wanted) and set(found) == wanted:
            return root
    return None


def load_eval(root: Path | str) -> pd.DataFrame:
    """info.csv's rows in order: ImageID and the image path. Raises if an image is missing."""
    df, problems = scan_eval(root)
    if problems:
        raise problems_error(problems)
    return df


def read_truth(path: Path | str) -> pd.DataFrame:
    """An answer key (ImageID, ans, Usage), validated."""
    problems: list[Problem] = []
    df = _read_csv(Path(path), TRUTH_COLUMNS, problems)
    if problems:
        raise problems_error(problems)
    ans = pd.to_numeric(df["ans"], errors="coerce")
    if not ans.between(0, L.N_CLASSES - 1).all():
        raise CompError(f"{path}: ans values must be classes 0-{L.N_CLASSES - 1}")
    return df.assign(ans=ans.astype(np.int64))


def load_truth(root: Path | str) -> pd.DataFrame | None:
    """The answer key eval_truth.csv of a synthetic / benchmark root, else None."""
    path = Path(root) / "eval_truth.csv"
    return read_truth(path) if path.is_file() else None
