"""`comp data check`: what a dataset root holds and everything wrong with it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import ui
from ..errors import CompError
from . import labels as L
from .images import read_image
from .reader import Problem, load_truth, scan_eval, scan_train

# A class with fewer than this share of the train images gets a warning: its F1 will be noisy and it
# weighs 1/18 of the macro F1 all the same.
RARE_CLASS_SHARE = 0.01


@dataclass
class CheckReport:
    root: Path
    train: pd.DataFrame
    eval: pd.DataFrame
    truth: pd.DataFrame | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def people(self) -> int:
        return int(self.train["person"].nunique())

    @property
    def class_counts(self) -> np.ndarray:
        return np.bincount(self.train["label"].to_numpy(np.int64), minlength=L.N_CLASSES)

    def head_counts(self) -> dict[str, np.ndarray]:
        heads = L.decode_heads(self.train["label"].to_numpy(np.int64))
        return {h: np.bincount(v, minlength=L.HEAD_SIZES[h]) for h, v in heads.items()}


def _imbalance_warnings(train: pd.DataFrame, bins: L.AgeBins) -> list[str]:
    if train.empty:
        return []
    counts = np.bincount(train["label"].to_numpy(np.int64), minlength=L.N_CLASSES)
    names = L.class_names(bins)
    out = []
    empty = [names[c] for c in range(L.N_CLASSES) if counts[c] == 0]
    if empty:
        out.append(f"{len(empty)} classes have no train image ({', '.join(empty[:4])}): their F1 will be 0")
    rare = [f"{names[c]} ({counts[c]})" for c in range(L.N_CLASSES) if 0 < counts[c] < RARE_CLASS_SHARE * len(train)]
    if rare:
        out.append(f"rare classes (< {RARE_CLASS_SHARE:.0%} of images): {', '.join(rare)} — consider class weights, "
                   "a weighted sampler or bias tuning (`comp ensemble --fit`)")
    people = train.groupby("person")["age_group"].first()
    old = (people == 2).mean()
    if old < 0.1:
        out.append(f"only {old:.1%} of people are in the oldest age group ({bins.names()[2]}): age is the hard head")
    return out


def check_dataset(root: Path | str, deep: bool = False, bins: L.AgeBins = L.AgeBins(),
                  relabel: Path | str | None = None) -> CheckReport:
    root = Path(root)
    if not root.is_dir():
        raise CompError(f"{root}: no such dataset folder; expected a root holding train/ and eval/")
    train, problems = scan_train(root, bins, relabel)
    eval_df, eval_problems = scan_eval(root)
    problems += eval_problems
    truth = None
    try:
        truth = load_truth(root)
    except CompError as e:
        problems.append(Problem(str(e), str(root / "eval_truth.csv"), "fix or remove the answer key"))
    if truth is not None and not eval_df.empty and list(truth["ImageID"]) != list(eval_df["ImageID"]):
        problems.append(Problem("eval_truth.csv ImageIDs differ from info.csv's", str(root / "eval_truth.csv"),
                                "the answer key must list info.csv's images in the same order"))
    if deep:
        paths = list(train["path"]) + [p for p in eval_df["path"] if Path(p).exists()]
        for p in ui.track(paths, "decoding every image"):
            try:
                read_image(p)
            except CompError:
                problems.append(Problem("unreadable or corrupt image", p, "replace or remove it"))
    return CheckReport(root, train, eval_df, truth, problems, _imbalance_warnings(train, bins))
