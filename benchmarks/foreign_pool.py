"""A pool of submission CSVs made WITHOUT comp's training code, for benchmarks/estimator.py: the kinds of
CSVs other teams hold, so the estimator is judged on submissions it was not built around.

    python benchmarks/foreign_pool.py --data ../shared/datasets/utkmask --out benchmarks/out/foreign

Everything here is its own code: images read with PIL, labels by the competition's formula, its own
person-level hold-out (another seed than comp's folds), models from scikit-learn and a plain torch loop.
- a small CNN (plain torch, no augmentation, no label smoothing, Adam) saved after 1, 2, 4, 8 and 12
  epochs: from under-trained to overfit and overconfident; some epochs also with flip TTA;
- scikit-learn on small features: logistic regression on HOG, a random forest on raw pixels (badly
  calibrated probabilities), a linear SVM (answers only: no probabilities);
- mode votes of three CSVs (answers only).
CSVs are written with the csv module; probabilities, where a model has them, as NAME.probs.npy (float32,
rows summing to 1), the sidecar `comp estimate` reads. No provenance JSON: comp sees them as external.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

MASKS = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
SIZE = (48, 64)  # width, height


def label(stem: str, gender: str, age: int) -> int:
    return 6 * MASKS[stem] + 3 * (gender == "female") + (0 if age < 30 else 1 if age < 60 else 2)


def load(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize(SIZE, Image.BILINEAR)) for p in paths])


def read_train(root: Path):
    paths, labels, people = [], [], []
    with open(root / "train" / "train.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            folder = root / "train" / "images" / row["path"]
            for img in sorted(folder.iterdir()):
                if img.stem in MASKS and img.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    paths.append(img)
                    labels.append(label(img.stem, row["gender"], int(row["age"])))
                    people.append(row["id"])
    return paths, np.array(labels), np.array(people)


def write(out: Path, name: str, ids: list[str], probs: np.ndarray | None, ans: np.ndarray | None = None):
    ans = probs.argmax(1) if ans is None else ans
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ImageID", "ans"])
        w.writerows(zip(ids, ans.tolist(), strict=True))
    if probs is not None:
        np.save(out / f"{name}.probs.npy", probs.astype(np.float32))
    print(f"wrote {name}")


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128))
        self.head = nn.Linear(128, 18)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def cnn_probs(model, x: np.ndarray, flip: bool) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            b = torch.from_numpy(x[i:i + 256]).permute(0, 3, 1, 2).float() / 255
            p = model(b).softmax(1)
            if flip:
                p = (p + model(torch.flip(b, dims=[3])).softmax(1)) / 2
            out.append(p.numpy())
    model.train()
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/foreign"))
    ap.add_argument("--seed", type=int, default=0, help="Another seed, another pool: the hold-out people, the "
                    "CNN's initialisation and batches, the forest (0: the pools the README reports).")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1 + args.seed)
    t = time.time()
    paths, y, people = read_train(args.data)
    with open(args.data / "eval" / "info.csv", newline="") as fh:
        ids = [r["ImageID"] for r in csv.DictReader(fh)]
    x = load(paths)
    xe = load([args.data / "eval" / "images" / i for i in ids])
    # its own person-level hold-out (used for nothing but keeping the models honest about overfitting)
    tr, _ = next(GroupShuffleSplit(1, test_size=0.15, random_state=7 + args.seed).split(x, y, people))
    print(f"{len(x)} train images ({len(tr)} used), {len(xe)} eval, read in {time.time() - t:.0f}s")

    # the plain torch loop: no augmentation, no label smoothing, snapshots as it overfits
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xt = torch.from_numpy(x[tr]).permute(0, 3, 1, 2).float() / 255
    yt = torch.from_numpy(y[tr])
    snapshots = {1: False, 2: True, 4: False, 8: True, 12: False}
    for epoch in range(1, max(snapshots) + 1):
        order = torch.randperm(len(xt))
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if epoch in snapshots:
            write(args.out, f"cnn-e{epoch}", ids, cnn_probs(model, xe, False))
            if snapshots[epoch]:
                write(args.out, f"cnn-e{epoch}-flip", ids, cnn_probs(model, xe, True))

    # scikit-learn on small features
    from skimage.feature import hog

    def hog_of(a):
        return np.stack([hog(img.mean(2), pixels_per_cell=(8, 8), cells_per_block=(2, 2)) for img in a])
    h, he = hog_of(x[tr]), hog_of(xe)
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300)).fit(h, y[tr])
    write(args.out, "hog-logreg", ids, lr.predict_proba(he))
    small = lambda a: a[:, ::4, ::4].reshape(len(a), -1) / 255  # noqa: E731  (16x12 pixels)
    rf = RandomForestClassifier(200, min_samples_leaf=2, n_jobs=2, random_state=args.seed).fit(small(x[tr]), y[tr])
    write(args.out, "pixels-forest", ids, rf.predict_proba(small(xe)))
    svm = make_pipeline(StandardScaler(), LinearSVC(C=0.01, max_iter=3000)).fit(h, y[tr])
    write(args.out, "hog-svm", ids, None, svm.predict(he))

    # mode votes of three (answers only), ties to the first
    def vote(names):
        answers = np.stack([np.loadtxt(args.out / f"{n}.csv", delimiter=",", skiprows=1, usecols=1, dtype=int)
                            for n in names])
        counts = np.stack([(answers == c).sum(0) for c in range(18)], 1)
        first = np.eye(18)[answers[0]] * 0.5
        return (counts + first).argmax(1)
    write(args.out, "vote-cnn8+hog+forest", ids, None, vote(["cnn-e8-flip", "hog-logreg", "pixels-forest"]))
    write(args.out, "vote-cnn4+cnn8+cnn12", ids, None, vote(["cnn-e4", "cnn-e8", "cnn-e12"]))
    print(f"done in {time.time() - t:.0f}s")


if __name__ == "__main__":
    main()
