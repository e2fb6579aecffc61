"""Face crops: a copy of a dataset root in the same layout, each image cut to its face plus a margin.

    OUT/train/train.csv, OUT/train/images/<folder>/<shot>.<ext>    same names, cropped pixels
    OUT/eval/info.csv, OUT/eval/images/<ImageID>, OUT/eval_truth.csv (when the root has one)
    OUT/crops.csv      image,split,mask,x0,y0,x1,y1,score,detector,fallback — written last: the copy is complete
    OUT/crop.json      what made it (root, detector, weights, margin, size); another setting is refused
    OUT/.detections.csv  the detector's answer per image so far: an interrupted run resumes from it

The detectors (mtcnn, haar, yolo) are in `comp.data.detectors`. Images are detected on a copy at most DETECT_SIDE pixels long (MTCNN's cost grows with pixels; faces fill much of
these portraits, so little is lost) and the largest face is kept, its box scaled back.

A mask hides half the face, so detectors miss masked shots. No image goes uncropped: a missed train
image takes the face box of the same person's `normal` shot (else their best-scoring one), fallback
`person`; a missed eval image (people unknown), or a person with no detection at all, takes the median
relative box of every detection in the root, fallback `prior`; when nothing at all was detected, the
whole image, fallback `image`. Boxes grow by `margin` of their size on each side, then widen to a fixed
aspect (3:4 portrait, or --size's) so a later resize does not distort, then shift and shrink to fit.

`cropped_root` serves pipelines (`data.crop: mtcnn`, or `yolo:PATH` for a weights file): the copy lives
under the cache folder ($COMP_CACHE_DIR, default ~/.cache/comp) in `crops/<root name>-<detector>-m<margin>-
<hash of the absolute root, detector and margin>`, since the raw root may be read-only. Changed pixels
under an unchanged file name are not noticed; added or removed images are.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import ui
from ..errors import CompError
from ..fileio import atomic_path, atomic_write
from . import labels as L
from .cache import default_cache_dir
from .detectors import make_detector
from .images import read_image
from .reader import load_eval, load_train, load_truth

DETECT_SIDE = 160  # longest side of the copy the detector sees
BATCH = 32
ASPECT = 3 / 4  # width / height of the competition's portraits
JPEG_QUALITY = 95
CROPS_COLUMNS = ("image", "split", "mask", "x0", "y0", "x1", "y1", "score", "detector", "fallback")
JOURNAL_COLUMNS = ("image", "width", "height", "x0", "y0", "x1", "y1", "score")
FLUSH_SECONDS = 10.0

Box = tuple[float, float, float, float]


# ------------------------------------------------------------------------------------------ box maths
def crop_box(face: Box, width: int, height: int, margin: float, aspect: float = ASPECT) -> tuple[int, int, int, int]:
    """Integer crop (x0, y0, x1, y1) of a `width` x `height` image around `face`: grown by `margin` of the
    face's size on each side, widened to `aspect` (w/h) without cutting the face, then shrunk (same aspect,
    same centre) when larger than the image and shifted inside it."""
    x0, y0, x1, y1 = face
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = max(x1 - x0, 1.0) * (1 + 2 * margin), max(y1 - y0, 1.0) * (1 + 2 * margin)
    if w / h < aspect:
        w = h * aspect
    else:
        h = w / aspect
    s = min(1.0, width / w, height / h)
    w, h = w * s, h * s
    left = min(max(cx - w / 2, 0.0), width - w)
    top = min(max(cy - h / 2, 0.0), height - h)
    bx0, by0 = int(round(left)), int(round(top))
    return bx0, by0, min(width, bx0 + max(1, int(round(w)))), min(height, by0 + max(1, int(round(h))))


def relative(box: Box, width: int, height: int) -> np.ndarray:
    return np.asarray(box, dtype=np.float64) / (width, height, width, height)


def prior_box(d: pd.DataFrame) -> np.ndarray | None:
    """Median relative face box (x0, y0, x1, y1 as shares of width / height) of the detected images."""
    found = d.dropna(subset=["x0"])
    if found.empty:
        return None
    rel = found[["x0", "y0", "x1", "y1"]].to_numpy(np.float64) / found[["width", "height"] * 2].to_numpy(np.float64)
    return np.median(rel, axis=0)


def person_boxes(d: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per train person, the relative face box of their `normal` shot, else of their best-scoring detection."""
    d = d[d["split"] == "train"].dropna(subset=["x0"])
    d = d.assign(normal=d["mask"] == "normal").sort_values(["normal", "score"], ascending=False, kind="stable")
    return {r.person: relative((r.x0, r.y0, r.x1, r.y1), r.width, r.height)
            for r in d.groupby("person").head(1).itertuples()}


def resolve_boxes(items: pd.DataFrame, detections: pd.DataFrame) -> pd.DataFrame:
    """`items` joined with their detections, plus the face box to crop around (pixels) and where it came
    from: `no` (detected), `person`, `prior` or `image` (see the module docstring)."""
    d = items.join(detections, on="image")
    persons, prior = person_boxes(d), prior_box(d)
    faces, fallbacks = [], []
    for r in d.itertuples():
        size = np.array([r.width, r.height] * 2, dtype=np.float64)
        if not np.isnan(r.x0):
            faces.append((r.x0, r.y0, r.x1, r.y1))
            fallbacks.append("no")
        elif r.person in persons:
            faces.append(tuple(persons[r.person] * size))
            fallbacks.append("person")
        elif prior is not None:
            faces.append(tuple(prior * size))
            fallbacks.append("prior")
        else:
            faces.append((0.0, 0.0, float(r.width), float(r.height)))
            fallbacks.append("image")
    return d.assign(face=faces, fallback=fallbacks)


# ------------------------------------------------------------------------------------------- the copy
@dataclass
class CropSummary:
    out: Path
    detector: str
    crops: pd.DataFrame  # crops.csv
    processed: int  # images detected by this call (0: the copy was already complete)
    seconds: float  # whole call

    @property
    def images_per_s(self) -> float:
        return self.processed / max(self.seconds, 1e-9)

    def rates(self) -> pd.DataFrame:
        """Per mask state (unknown: eval images without an answer key): images, detected, fallbacks, rate."""
        c = self.crops.assign(mask=self.crops["mask"].replace("", "unknown"))
        t = pd.crosstab(c["mask"], c["fallback"]).reindex(columns=["no", "person", "prior", "image"], fill_value=0)
        t = t.reindex([m for m in (*L.MASK_NAMES, "unknown") if m in t.index])
        t.loc["all"] = t.sum()
        t.insert(0, "images", t.sum(axis=1))
        return t.rename(columns={"no": "detected"}).assign(rate=lambda x: x["detected"] / x["images"])


def list_images(root: Path) -> pd.DataFrame:
    """Every image of the root (validated first, so bad data fails before any work): image (path relative
    to the root), path, split, mask name ('' when unknown), person ('' for eval)."""
    parts = []
    if (root / "train").exists() or not (root / "eval").exists():
        t = load_train(root)
        parts.append(pd.DataFrame({"image": "train/images/" + t["image"], "path": t["path"], "split": "train",
                                   "mask": [L.MASK_NAMES[m] for m in t["mask"]], "person": t["person"]}))
    if (root / "eval").exists():
        e = load_eval(root)
        truth = load_truth(root)
        masks = {} if truth is None else dict(zip(truth["ImageID"], L.decode_heads(truth["ans"].to_numpy())["mask"],
                                                  strict=True))
        parts.append(pd.DataFrame({"image": "eval/images/" + e["ImageID"], "path": e["path"], "split": "eval",
                                   "mask": [L.MASK_NAMES[masks[i]] if i in masks else "" for i in e["ImageID"]],
                                   "person": ""}))
    return pd.concat(parts, ignore_index=True)


def _settings(root: Path, detector: str, weights, margin: float, size) -> dict:
    return {"root": str(root.resolve()), "detector": detector, "weights": weights and str(Path(weights).resolve()),
            "margin": margin, "size": list(size) if size else None}


def _claim(out: Path, settings: dict) -> None:
    """Refuses an OUT that is not this crop's folder; records the settings in a new one."""
    meta = out / "crop.json"
    if meta.is_file():
        made = json.loads(meta.read_text())
        if made != settings:
            diff = ", ".join(f"{k} {made.get(k)!r} (now {v!r})" for k, v in settings.items() if made.get(k) != v)
            raise CompError(f"{out}: holds crops made with other settings: {diff}; choose another --out or delete it")
        return
    if out.exists() and any(out.iterdir()):
        raise CompError(f"{out}: folder exists and is not a crop copy (no crop.json); choose another --out")
    with atomic_write(meta) as fh:
        json.dump(settings, fh, indent=1)


def _read_journal(out: Path) -> pd.DataFrame:
    p = out / ".detections.csv"
    if not p.is_file():
        return pd.DataFrame(columns=JOURNAL_COLUMNS).set_index("image")
    return pd.read_csv(p, dtype={"image": str}).set_index("image")


def _write_journal(out: Path, rows: dict[str, tuple]) -> None:
    with atomic_write(out / ".detections.csv", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(JOURNAL_COLUMNS)
        w.writerows((image, *row) for image, row in rows.items())


def _detect_view(path: str) -> tuple[np.ndarray, int, int]:
    """The image shrunk to at most DETECT_SIDE pixels long, and its full width and height."""
    img = read_image(path)
    h, w = img.shape[:2]
    s = min(1.0, DETECT_SIDE / max(h, w))
    if s < 1:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img), w, h


def _detect_batch(detector, paths: list[str]) -> list[tuple]:
    """Journal rows (width, height, x0, y0, x1, y1, score) in full-image pixels; box and score empty if missed."""
    views = [_detect_view(p) for p in paths]
    rows: list[tuple] = [()] * len(paths)
    by_shape: dict[tuple, list[int]] = {}
    for i, (img, _, _) in enumerate(views):
        by_shape.setdefault(img.shape, []).append(i)
    for idx in by_shape.values():  # a batch must share one size
        for i, hit in zip(idx, detector.detect([views[i][0] for i in idx]), strict=True):
            img, w, h = views[i]
            if hit is None:
                rows[i] = (w, h, "", "", "", "", "")
                continue
            sx, sy = w / img.shape[1], h / img.shape[0]
            (x0, y0, x1, y1), score = hit
            rows[i] = (w, h, round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2), round(score, 4))
    return rows


def detect_all(detector, todo: pd.DataFrame, out: Path, journal: pd.DataFrame) -> pd.DataFrame:
    """Runs the detector on the images not in the journal yet, saving the journal as it goes."""
    rows = {image: tuple("" if pd.isna(v) else v for v in r) for image, r in
            zip(journal.index, journal[list(JOURNAL_COLUMNS[1:])].itertuples(index=False, name=None), strict=True)}
    found, last_flush = 0, time.monotonic()
    try:
        with ui.make_progress() as bar:
            task = bar.add_task("detecting faces", total=len(todo), info="")
            for start in range(0, len(todo), BATCH):
                chunk = todo.iloc[start:start + BATCH]
                for image, row in zip(chunk["image"], _detect_batch(detector, chunk["path"].tolist()), strict=True):
                    rows[image] = row
                    found += row[2] != ""
                bar.update(task, advance=len(chunk), info=f"found {found / (start + len(chunk)):.0%}")
                if time.monotonic() - last_flush > FLUSH_SECONDS:
                    _write_journal(out, rows)
                    last_flush = time.monotonic()
    finally:  # an error or Ctrl-C keeps what was detected
        _write_journal(out, rows)
    return _read_journal(out)


def _encode(img: np.ndarray, ext: str) -> bytes:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = (cv2.imencode(".png", bgr) if ext == ".png"
               else cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]))
    if not ok:
        raise CompError(f"could not encode a {ext} crop; check disk space and the image")
    return buf.tobytes()


def write_crop(src: str, dst: Path, box: tuple[int, int, int, int], size: tuple[int, int] | None) -> None:
    x0, y0, x1, y1 = box
    img = read_image(src)[y0:y1, x0:x1]
    if size is not None:
        shrinking = img.shape[1] >= size[0] and img.shape[0] >= size[1]
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    with atomic_path(dst) as tmp:
        tmp.write_bytes(_encode(img, dst.suffix.lower()))


def _copy_csvs(root: Path, out: Path, splits: set[str]) -> None:
    names = [n for s, n in (("train", "train/train.csv"), ("eval", "eval/info.csv")) if s in splits]
    for name in names + (["eval_truth.csv"] if (root / "eval_truth.csv").is_file() else []):
        with atomic_path(out / name) as tmp:
            shutil.copyfile(root / name, tmp)


def _prune(out: Path, items: pd.DataFrame) -> None:
    """Deletes crops of images the root no longer lists (a person removed while fixing the data), so the
    copy validates like the root."""
    keep = set(items["image"])
    for split in ("train", "eval"):
        for p in sorted((out / split / "images").rglob("*"), reverse=True):  # files before their folders
            if p.is_file() and p.relative_to(out).as_posix() not in keep:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def _complete(out: Path, items: pd.DataFrame) -> pd.DataFrame | None:
    """crops.csv when it covers exactly these images (the copy is finished), else None."""
    p = out / "crops.csv"
    if not p.is_file():
        return None
    crops = pd.read_csv(p, dtype={"image": str, "mask": str, "fallback": str}, keep_default_na=False)
    return crops if set(crops["image"]) == set(items["image"]) else None


def crop_dataset(root: Path | str, out: Path | str, detector: str = "mtcnn", margin: float = 0.3,
                 size: tuple[int, int] | None = None, weights: Path | str | None = None,
                 workers: int = 2) -> CropSummary:
    """Writes (or resumes, or finds complete) the cropped copy of `root` in `out`; see the module docstring."""
    start = time.perf_counter()
    root, out = Path(root), Path(out)
    if margin < 0:
        raise CompError(f"--margin {margin}: must be 0 or more (a share of the face size added on each side)")
    if out.resolve() == root.resolve():
        raise CompError(f"{out}: --out is the dataset root itself; crops go to a new folder")
    items = list_images(root)
    settings = _settings(root, detector, weights, margin, size)
    done = _complete(out, items) if (out / "crop.json").is_file() else None
    if done is not None:
        _claim(out, settings)
        return CropSummary(out, detector, done, 0, time.perf_counter() - start)
    model = make_detector(detector, weights)  # a bad name or weights file fails before OUT is claimed
    _claim(out, settings)
    journal = _read_journal(out)
    todo = items[~items["image"].isin(journal.index)]
    if len(todo):
        journal = detect_all(model, todo, out, journal)
    boxes = resolve_boxes(items, journal)
    aspect = size[0] / size[1] if size else ASPECT
    boxes["crop"] = [crop_box(f, int(w), int(h), margin, aspect)
                     for f, w, h in zip(boxes["face"], boxes["width"], boxes["height"], strict=True)]
    pending = [(r.path, out / r.image, r.crop) for r in boxes.itertuples() if not (out / r.image).is_file()]

    def one(job) -> None:
        write_crop(*job, size)

    with ThreadPoolExecutor(max(1, workers)) as pool:  # decode/encode release the GIL
        for _ in ui.track(pool.map(one, pending), "writing crops", total=len(pending)):
            pass
    _prune(out, items)
    _copy_csvs(root, out, set(items["split"]))
    crops = _crops_table(boxes, detector)
    with atomic_write(out / "crops.csv", newline="") as fh:
        crops.to_csv(fh, index=False)
    return CropSummary(out, detector, crops, len(todo), time.perf_counter() - start)


def _crops_table(boxes: pd.DataFrame, detector: str) -> pd.DataFrame:
    xy = pd.DataFrame(boxes["crop"].tolist(), columns=["x0", "y0", "x1", "y1"], index=boxes.index)
    score = boxes["score"].where(boxes["fallback"] == "no")
    return pd.concat([boxes[["image", "split", "mask"]], xy], axis=1).assign(
        score=score.map(lambda s: "" if pd.isna(s) else f"{s:.4f}"), detector=detector,
        fallback=boxes["fallback"])[list(CROPS_COLUMNS)].reset_index(drop=True)


def auto_crop_dir(root: Path | str, detector: str, margin: float, cache_dir: Path | str | None = None) -> Path:
    """Where `cropped_root` keeps the copy: the cache folder, keyed by absolute root, detector and margin."""
    key = hashlib.sha1(f"{Path(root).resolve()}|{detector}|{margin}".encode()).hexdigest()[:12]
    name = Path(root).resolve().name or "root"
    return Path(cache_dir or default_cache_dir()) / "crops" / f"{name}-{detector.partition(':')[0]}-m{margin:g}-{key}"


def cropped_root(root: Path | str, detector: str, margin: float = 0.3, cache_dir: Path | str | None = None) -> Path:
    """The cropped copy of `root` for pipelines (`data.crop`), made or resumed on first use. `detector` is a
    registered name, or `yolo:PATH` to name a weights file."""
    name, _, weights = detector.partition(":")
    out = auto_crop_dir(root, detector, margin, cache_dir)
    crop_dataset(root, out, name, margin, weights=weights or None)
    return out
