"""`comp data check`: what a dataset root holds and everything wrong with it."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import ui
from ..errors import CompError
from . import labels as L
from .images import Header, read_header, read_image
from .reader import Problem, load_truth, scan_eval, scan_train

# A class with fewer than this share of the train images gets a warning: its F1 will be noisy and it
# weighs 1/18 of the macro F1 all the same.
RARE_CLASS_SHARE = 0.01
# Eval images that differ from the train images in more than this share (size, colour) get a warning: the
# model meets inputs at test time it has not trained on.
SHIFT_SHARE = 0.05


@dataclass
class ImageProfile:
    """Sizes, formats and colour modes of one split's images, from their headers (`comp data check --deep`)."""
    images: int
    sizes: Counter  # (w, h) once upright
    formats: Counter
    modes: Counter
    rotated: int  # stored sideways or mirrored, with an EXIF orientation saying so

    @classmethod
    def of(cls, headers: list[Header]) -> ImageProfile:
        return cls(len(headers), Counter(h.size for h in headers), Counter(h.format for h in headers),
                   Counter(h.mode for h in headers), sum(h.orientation != 1 for h in headers))

    def share(self, counter: Counter, key) -> float:
        return counter[key] / max(self.images, 1)

    @property
    def gray(self) -> float:
        return sum(n for m, n in self.modes.items() if m in ("L", "LA", "1", "I;16", "I")) / max(self.images, 1)

    def common_size(self) -> tuple[int, int] | None:
        return self.sizes.most_common(1)[0][0] if self.sizes else None


def _shift_warnings(train: ImageProfile, ev: ImageProfile) -> list[str]:
    """Where the eval images are not like the train images."""
    out = []
    size = train.common_size()
    if size and ev.images and 1 - ev.share(ev.sizes, size) > SHIFT_SHARE + (1 - train.share(train.sizes, size)):
        out.append(f"{1 - ev.share(ev.sizes, size):.0%} of eval images are not {size[0]}x{size[1]}, the train images' "
                   f"usual size ({train.share(train.sizes, size):.0%} of them): they are resized alike, but check that "
                   "framing and face size match")
    if ev.images and abs(ev.gray - train.gray) > SHIFT_SHARE:
        out.append(f"grayscale images: {train.gray:.0%} of train, {ev.gray:.0%} of eval (all are read as RGB); "
                   "train on both: `augment.preset: strong` turns 5 % gray, or add {ToGray: {p: 0.2}} to `augment.ops`")
    for name, p in (("train", train), ("eval", ev)):
        if p.rotated:
            out.append(f"{p.rotated} {name} images are stored sideways or mirrored with an EXIF orientation: comp "
                       "reads them upright, as a viewer shows them (other tools may not)")
    return out


@dataclass
class CheckReport:
    root: Path
    train: pd.DataFrame
    eval: pd.DataFrame
    truth: pd.DataFrame | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    images: dict[str, ImageProfile] | None = None  # "train", "eval" (with --deep)

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
    warnings = _imbalance_warnings(train, bins)
    images = None
    if deep:
        splits = {"train": list(train["path"]), "eval": [p for p in eval_df["path"] if Path(p).exists()]}
        headers: dict[str, list[Header]] = {"train": [], "eval": []}
        for split, p in ui.track([(s, p) for s, paths in splits.items() for p in paths], "decoding every image"):
            try:
                header = read_header(p)
                read_image(p)
            except CompError:
                problems.append(Problem("unreadable or corrupt image", p, "replace or remove it"))
                continue
            headers[split].append(header)
        images = {s: ImageProfile.of(h) for s, h in headers.items()}
        warnings += _shift_warnings(images["train"], images["eval"])
    return CheckReport(root, train, eval_df, truth, problems, warnings, images)
