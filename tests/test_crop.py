import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from comp import runs
from comp.cli import app
from comp.data import crop
from comp.data.detectors import DETECTORS
from comp.data.reader import load_eval, load_train
from comp.errors import CompError

from .conftest import tiny_cfg


class FakeDetector:
    """Finds the middle half of every image except every third one it is shown; counts its calls."""

    calls = 0
    images = 0

    def __init__(self, weights=None):
        pass

    def detect(self, images):
        out = []
        for img in images:
            h, w = img.shape[:2]
            FakeDetector.images += 1
            out.append(None if FakeDetector.images % 3 == 0 else ((w / 4, h / 4, 3 * w / 4, 3 * h / 4), 0.9))
        FakeDetector.calls += 1
        return out


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(DETECTORS, "fake", FakeDetector)
    monkeypatch.setattr(FakeDetector, "calls", 0)
    monkeypatch.setattr(FakeDetector, "images", 0)
    return FakeDetector


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------------------ box maths
def test_crop_box_adds_margin_then_widens_to_portrait():
    # 40x40 face, margin 0.25 → 60x60, widened to 3:4 → 60x80 around the same centre
    assert crop.crop_box((40, 40, 80, 80), 200, 300, 0.25) == (30, 20, 90, 100)
    # a tall face grows in width instead: 30x80 → 60x80 at margin 0
    assert crop.crop_box((45, 20, 75, 100), 200, 300, 0.0) == (30, 20, 90, 100)


def test_crop_box_shifts_inside_and_shrinks_to_fit():
    assert crop.crop_box((-10, -5, 20, 35), 200, 300, 0.0) == (0, 0, 30, 40)  # shifted, not cut
    assert crop.crop_box((170, 260, 200, 300), 200, 300, 0.0) == (170, 260, 200, 300)
    # the whole image is the most a box can be: same aspect, so a 3:4 image is taken whole
    assert crop.crop_box((0, 0, 150, 200), 150, 200, 0.5) == (0, 0, 150, 200)
    x0, y0, x1, y1 = crop.crop_box((10, 10, 90, 90), 100, 100, 0.3)  # square image: height limits
    assert (y0, y1) == (0, 100) and x1 - x0 == 75


@settings(max_examples=200, deadline=None)
@given(st.integers(16, 600), st.integers(16, 600), st.floats(-50, 600), st.floats(-50, 600), st.floats(1, 400),
       st.floats(1, 400), st.floats(0, 1), st.sampled_from([3 / 4, 1.0, 4 / 5]))
def test_crop_box_always_inside_with_fixed_aspect(width, height, x, y, w, h, margin, aspect):
    x0, y0, x1, y1 = crop.crop_box((x, y, x + w, y + h), width, height, margin, aspect)
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    bw, bh = x1 - x0, y1 - y0
    assert abs(bw - bh * aspect) <= 1 + aspect  # rounding only
    if bw < width - 1 and bh < height - 1:  # not shrunk: the face and its margin are inside
        assert x0 <= max(x, 0) + 1 and x1 >= min(x + w, width) - 1


# ------------------------------------------------------------------------------------------ fallbacks
def _items(rows):
    return pd.DataFrame(rows, columns=["image", "path", "split", "mask", "person"])


def _detections(rows):
    return pd.DataFrame(rows, columns=["image", *crop.JOURNAL_COLUMNS[1:]]).set_index("image")


def test_fallback_person_prefers_the_normal_shot_then_prior_then_image():
    items = _items([
        ("a/normal", "", "train", "normal", "A"), ("a/mask1", "", "train", "wear", "A"),
        ("a/mask2", "", "train", "wear", "A"),
        ("b/mask1", "", "train", "wear", "B"), ("e/1", "", "eval", "", ""), ("e/2", "", "eval", "", ""),
    ])
    nan = np.nan
    det = _detections([
        ("a/normal", 100, 200, 10, 20, 50, 80, 0.8), ("a/mask1", 100, 200, 0, 0, 100, 100, 0.99),
        ("a/mask2", 100, 200, nan, nan, nan, nan, nan),
        ("b/mask1", 100, 200, nan, nan, nan, nan, nan),
        ("e/1", 200, 400, 40, 80, 120, 200, 0.7), ("e/2", 50, 100, nan, nan, nan, nan, nan),
    ])
    r = crop.resolve_boxes(items, det).set_index("image")
    assert r["fallback"].to_dict() == {"a/normal": "no", "a/mask1": "no", "a/mask2": "person", "b/mask1": "prior",
                                       "e/1": "no", "e/2": "prior"}
    assert r.loc["a/mask2", "face"] == pytest.approx((10, 20, 50, 80))  # the normal shot, not the better score
    prior = np.median([[.1, .1, .5, .4], [0, 0, 1, .5], [.2, .2, .6, .5]], axis=0)  # relative boxes
    assert r.loc["e/2", "face"] == pytest.approx(tuple(prior * [50, 100, 50, 100]))
    assert r.loc["b/mask1", "face"] == pytest.approx(tuple(prior * [100, 200, 100, 200]))

    nothing = det.assign(x0=nan, y0=nan, x1=nan, y1=nan, score=nan)
    r = crop.resolve_boxes(items, nothing).set_index("image")
    assert set(r["fallback"]) == {"image"}
    assert r.loc["e/2", "face"] == (0, 0, 50, 100)


# ------------------------------------------------------------------------------------------ the copy
def test_copy_keeps_layout_and_csvs_and_second_run_does_nothing(tiny_root, tmp_path, fake):
    out = tmp_path / "out"
    s = crop.crop_dataset(tiny_root, out, "fake", 0.3)
    raw_train, raw_eval = load_train(tiny_root), load_eval(tiny_root)
    train, ev = load_train(out), load_eval(out)
    assert train["image"].tolist() == raw_train["image"].tolist()
    assert train["label"].tolist() == raw_train["label"].tolist()
    assert ev["ImageID"].tolist() == raw_eval["ImageID"].tolist()
    for name in ("train/train.csv", "eval/info.csv", "eval_truth.csv"):
        assert (out / name).read_bytes() == (tiny_root / name).read_bytes()

    crops = pd.read_csv(out / "crops.csv", keep_default_na=False)
    assert tuple(crops.columns) == crop.CROPS_COLUMNS
    assert len(crops) == len(raw_train) + len(raw_eval) == s.processed
    assert set(crops["fallback"]) == {"no", "person", "prior"}
    assert set(crops.loc[crops["split"] == "eval", "fallback"]) <= {"no", "prior"}
    assert (crops.loc[crops["fallback"] != "no", "score"] == "").all()
    assert set(crops["mask"]) == {"wear", "incorrect", "normal"}  # eval masks from the answer key
    first = crops.iloc[0]
    with Image.open(out / first["image"]) as im:
        assert im.format == "JPEG" and im.size == (first["x1"] - first["x0"], first["y1"] - first["y0"])
    rates = s.rates()
    assert rates.loc["all", "images"] == len(crops)
    assert rates.loc["all", "rate"] == pytest.approx((crops["fallback"] == "no").mean())

    before, calls = _files(out), fake.calls
    again = crop.crop_dataset(tiny_root, out, "fake", 0.3)
    assert again.processed == 0 and fake.calls == calls
    assert _files(out) == before
    assert again.crops.equals(s.crops)


def test_interrupted_run_resumes_where_it_stopped(tiny_root, tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    real = FakeDetector.detect

    def dies_on_third_batch(self, images):
        if FakeDetector.calls == 2:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(crop, "BATCH", 16)
    monkeypatch.setattr(FakeDetector, "detect", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        crop.crop_dataset(tiny_root, out, "fake", 0.3)
    assert len(pd.read_csv(out / ".detections.csv")) == 32 and not (out / "crops.csv").exists()

    monkeypatch.setattr(FakeDetector, "detect", real)
    s = crop.crop_dataset(tiny_root, out, "fake", 0.3)
    assert s.processed == len(s.crops) - 32
    assert (out / "crops.csv").is_file()


def test_a_fixed_root_updates_its_copy(tiny_copy, tmp_path, fake):
    out = tmp_path / "out"
    first = crop.crop_dataset(tiny_copy, out, "fake", 0.3)
    train_csv = tiny_copy / "train" / "train.csv"
    lines = train_csv.read_text().splitlines()
    gone = lines[1].split(",")[-1]
    train_csv.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    shutil.rmtree(tiny_copy / "train" / "images" / gone)
    calls = fake.calls
    again = crop.crop_dataset(tiny_copy, out, "fake", 0.3)
    assert again.processed == 0 and fake.calls == calls and len(again.crops) == len(first.crops) - 7
    assert len(load_train(out)) == len(load_train(tiny_copy)) and not (out / "train" / "images" / gone).exists()


def test_cli_prints_rates_and_images_per_s(tiny_root, tmp_path, fake):
    args = ["data", "crop", str(tiny_root), "--out", str(tmp_path / "out"), "--detector", "fake", "--size", "30x40"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "wear" in r.output and "images/s" in r.output
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "already complete" in r.output
    r = CliRunner().invoke(app, args[:-2] + ["--margin", "0.5"])
    assert r.exit_code == 2 and "other settings" in r.output


def test_size_resizes_crops_with_its_aspect(tiny_root, tmp_path, fake):
    out = tmp_path / "out"
    s = crop.crop_dataset(tiny_root, out, "fake", 0.1, size=(20, 20))
    row = s.crops.iloc[1]
    assert row["x1"] - row["x0"] == row["y1"] - row["y0"]  # square boxes for a square --size
    with Image.open(out / row["image"]) as im:
        assert im.size == (20, 20)


def test_png_stays_png(tmp_path):
    src, dst = tmp_path / "a.png", tmp_path / "out" / "a.png"
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(src)
    crop.write_crop(str(src), dst, (5, 10, 20, 30), None)
    with Image.open(dst) as im:
        assert im.format == "PNG" and im.size == (15, 20)


def test_refusals(tiny_root, tiny_copy, tmp_path, fake):
    with pytest.raises(CompError, match="is not a known face detector; choose one of mtcnn, haar, yolo"):
        crop.crop_dataset(tiny_root, tmp_path / "a", "nope")
    assert not (tmp_path / "a").exists()
    with pytest.raises(CompError, match="margin"):
        crop.crop_dataset(tiny_root, tmp_path / "a", "fake", -0.1)
    with pytest.raises(CompError, match="dataset root itself"):
        crop.crop_dataset(tiny_root, tiny_root, "fake")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(CompError, match="not a crop copy"):
        crop.crop_dataset(tiny_root, tmp_path / "busy", "fake")
    crop.crop_dataset(tiny_root, tmp_path / "b", "fake", 0.3)
    with pytest.raises(CompError, match="other settings: margin 0.3"):
        crop.crop_dataset(tiny_root, tmp_path / "b", "fake", 0.5)
    with pytest.raises(CompError, match="--weights is for yolo"):
        crop.make_detector("haar", "w.pt")
    # bad data fails before any work
    next((tiny_copy / "train" / "images").iterdir()).joinpath("mask1.jpg").unlink()
    calls = fake.calls
    with pytest.raises(CompError, match="missing the mask1 shot"):
        crop.crop_dataset(tiny_copy, tmp_path / "c", "fake")
    assert not (tmp_path / "c").exists() and fake.calls == calls


def test_cropped_root_lives_in_the_cache_and_is_reused(tiny_root, tiny_copy, tmp_path, fake, monkeypatch):
    monkeypatch.setenv("COMP_CACHE_DIR", str(tmp_path / "cache"))
    out = runs.data_root(tiny_cfg(tiny_root, "data.crop=fake", "data.crop_margin=0.2"))
    assert out.parent == tmp_path / "cache" / "crops" and out.name.startswith("tiny-fake-m0.2-")
    assert (out / "crops.csv").is_file() and len(load_train(out)) == len(load_train(tiny_root))
    calls = fake.calls
    assert crop.cropped_root(tiny_root, "fake", 0.2) == out and fake.calls == calls
    assert crop.cropped_root(tiny_root, "fake", 0.3) != out
    with pytest.raises(CompError, match="none.pt: YOLO weights file not found"):
        crop.cropped_root(tiny_root, f"yolo:{tmp_path / 'none.pt'}")  # a pipeline names yolo's weights so

    next((tiny_copy / "eval" / "images").iterdir()).unlink()
    with pytest.raises(CompError, match="no image in eval/images"):
        crop.cropped_root(tiny_copy, "fake", 0.2)
    assert len(list((tmp_path / "cache" / "crops").iterdir())) == 2


# ------------------------------------------------------------------------------------------ detectors
def _grace_hopper() -> str:
    from matplotlib import cbook

    return str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


@pytest.mark.parametrize("name", ["haar", "mtcnn"])
def test_detector_finds_a_real_face(name):
    if name == "mtcnn":
        pytest.importorskip("facenet_pytorch")
    # matplotlib ships a 512x600 portrait of Grace Hopper: her face is around x 180-350, y 110-340
    (row,) = crop._detect_batch(crop.make_detector(name), [_grace_hopper()])
    width, height, x0, y0, x1, y1, score = row
    assert (width, height) == (512, 600) and score > 0
    assert 200 < (x0 + x1) / 2 < 330 and 160 < (y0 + y1) / 2 < 300 and 100 < x1 - x0 < 260


def test_detector_on_a_blank_batch_finds_nothing():
    pytest.importorskip("facenet_pytorch")
    blank = [np.full((64, 48, 3), 128, np.uint8)] * 2
    assert crop.make_detector("mtcnn").detect(blank) == [None, None]
    assert crop.make_detector("haar").detect(blank) == [None, None]


def test_yolo_needs_weights_and_ultralytics(tmp_path, monkeypatch):
    with pytest.raises(CompError, match="--weights PATH"):
        crop.make_detector("yolo")
    with pytest.raises(CompError, match="not found"):
        crop.make_detector("yolo", tmp_path / "none.pt")
    weights = tmp_path / "face.pt"
    weights.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # as if not installed
    with pytest.raises(CompError, match="needs ultralytics"):
        crop.make_detector("yolo", weights)

    seen = []

    class Boxes:
        def __init__(self, xyxy, conf):
            self.xyxy, self.conf = _Tensor(xyxy), _Tensor(conf)

    class FakeYOLO:
        def __init__(self, path):
            assert path == str(weights)

        def predict(self, images, verbose):
            seen.extend(images)
            return [types.SimpleNamespace(boxes=Boxes([[0, 0, 4, 4], [1, 1, 9, 9]], [0.9, 0.5])),
                    types.SimpleNamespace(boxes=Boxes(np.zeros((0, 4)), np.zeros(0)))]

    monkeypatch.setitem(sys.modules, "ultralytics", types.SimpleNamespace(YOLO=FakeYOLO))
    img = np.zeros((10, 10, 3), np.uint8)
    img[..., 0] = 255  # red in RGB
    assert crop.make_detector("yolo", os.fspath(weights)).detect([img, img]) == [((1, 1, 9, 9), 0.5), None]
    assert seen[0][0, 0].tolist() == [0, 0, 255]  # ultralytics gets BGR


class _Tensor:
    def __init__(self, a):
        self.a = np.asarray(a, dtype=np.float32)

    def cpu(self):
        return self

    def numpy(self):
        return self.a
