import csv
import hashlib
import re
from pathlib import Path

import pytest
from PIL import Image

from comp.data.labels import MASK_STEMS, N_CLASSES, AgeBins, decode
from comp.data.synth import RACES, SynthSummary, write_synth
from comp.errors import CompError

TINY = (48, 64)
FOLDER = re.compile(r"^(\d{6})_(male|female)_(Asian|Black|White|Other)_(\d+)$")


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> SynthSummary:
    out = tmp_path_factory.mktemp("synth") / "small"
    return write_synth(out, people=20, eval_people=6, size=TINY, seed=3)


def test_summary_counts(small):
    assert small.train_people == 20
    assert small.train_images == 20 * 7
    assert small.eval_images == 6 * 7
    assert small.seconds > 0
    assert (small.root / "train" / "train.csv").is_file()


def test_train_layout(small):
    header, rows = _rows(small.root / "train" / "train.csv")
    assert header == ["id", "gender", "race", "age", "path"]
    assert [r["id"] for r in rows] == [f"{i:06d}" for i in range(1, 21)]
    folders = sorted(p.name for p in (small.root / "train" / "images").iterdir())
    assert folders == sorted(r["path"] for r in rows)
    for r in rows:
        m = FOLDER.match(r["path"])
        assert m, r["path"]
        assert m.groups() == (r["id"], r["gender"], r["race"], r["age"])
        assert r["race"] in RACES
        assert 18 <= int(r["age"]) <= 80
        shots = sorted(p.name for p in (small.root / "train" / "images" / r["path"]).iterdir())
        assert shots == sorted(f"{s}.jpg" for s in MASK_STEMS)
    with Image.open(small.root / "train" / "images" / rows[0]["path"] / "mask1.jpg") as im:
        assert im.format == "JPEG" and im.size == TINY and im.mode == "RGB"


def test_eval_layout_and_truth(small):
    info_header, info = _rows(small.root / "eval" / "info.csv")
    truth_header, truth = _rows(small.root / "eval_truth.csv")
    assert info_header == ["ImageID", "ans"]
    assert truth_header == ["ImageID", "ans", "Usage"]
    assert len(info) == 6 * 7
    assert all(r["ans"] == "0" for r in info)
    assert [r["ImageID"] for r in info] == [r["ImageID"] for r in truth]
    assert all(re.fullmatch(r"[0-9a-f]{40}\.jpg", r["ImageID"]) for r in info)
    on_disk = sorted(p.name for p in (small.root / "eval" / "images").iterdir())
    assert on_disk == sorted(r["ImageID"] for r in info)
    usage = [r["Usage"] for r in truth]
    assert set(usage) == {"Public", "Private"}
    assert usage.count("Public") == len(usage) // 2
    classes = [int(r["ans"]) for r in truth]
    assert all(0 <= c < N_CLASSES for c in classes)
    masks = [decode(c)[0] for c in classes]
    assert (masks.count(0), masks.count(1), masks.count(2)) == (5 * 6, 6, 6)
    assert [r["ImageID"] for r in info] != sorted(r["ImageID"] for r in info)  # shuffled, not in sha order


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path, small):
    a = write_synth(tmp_path / "a", people=20, eval_people=6, size=TINY, seed=3)
    b = write_synth(tmp_path / "b", people=20, eval_people=6, size=TINY, seed=4)
    assert _digests(a.root) == _digests(small.root)
    digests_b = _digests(b.root)
    csv_path = Path("train") / "train.csv"
    assert (b.root / csv_path).read_bytes() != (small.root / csv_path).read_bytes()
    assert set(_digests(a.root).values()).isdisjoint(digests_b.values())


def test_several_processes_write_the_same_bytes(tmp_path, small):
    # a 2700-person set at 384x512 takes ~11 minutes on one core: the benchmark draws it on all of them
    par = write_synth(tmp_path / "par", people=20, eval_people=6, size=TINY, seed=3, workers=2)
    assert _digests(par.root) == _digests(small.root)


def test_adding_people_keeps_the_earlier_ones(tmp_path, small):
    more = write_synth(tmp_path / "more", people=24, eval_people=6, size=TINY, seed=3)
    _, rows_small = _rows(small.root / "train" / "train.csv")
    _, rows_more = _rows(more.root / "train" / "train.csv")
    assert rows_more[:20] == rows_small
    path = Path("train") / "images" / rows_small[7]["path"] / "normal.jpg"
    assert (more.root / path).read_bytes() == (small.root / path).read_bytes()


def test_label_noise_changes_recorded_labels_only(tmp_path):
    clean = write_synth(tmp_path / "clean", people=40, eval_people=2, size=TINY, seed=5)
    noisy = write_synth(tmp_path / "noisy", people=40, eval_people=2, size=TINY, seed=5, label_noise=0.3)
    _, rows_clean = _rows(clean.root / "train" / "train.csv")
    _, rows_noisy = _rows(noisy.root / "train" / "train.csv")
    changed = [(c, n) for c, n in zip(rows_clean, rows_noisy, strict=True) if c != n]
    assert len(changed) == 12
    bins = AgeBins()
    assert any(c["gender"] != n["gender"] for c, n in changed)
    assert any(c["age"] != n["age"] for c, n in changed)
    for c, n in changed:
        assert c["id"] == n["id"] and c["race"] == n["race"]
        gender_flipped = c["gender"] != n["gender"]
        age_moved = abs(bins.group(int(c["age"])) - bins.group(int(n["age"]))) == 1
        assert gender_flipped != age_moved  # exactly one of the two, age only to a neighbouring group
        # the picture shows the true person: same pixels under the recorded (wrong) folder name
        shot = Path("train") / "images"
        assert (noisy.root / shot / n["path"] / "mask3.jpg").read_bytes() == \
            (clean.root / shot / c["path"] / "mask3.jpg").read_bytes()
    assert (noisy.root / "eval_truth.csv").read_bytes() == (clean.root / "eval_truth.csv").read_bytes()


def test_class_shares_like_the_competition(tmp_path):
    summary = write_synth(tmp_path / "shares", people=300, eval_people=1, size=(16, 16), seed=0)
    _, rows = _rows(summary.root / "train" / "train.csv")
    female = sum(r["gender"] == "female" for r in rows) / len(rows)
    groups = AgeBins().group([int(r["age"]) for r in rows])
    assert 0.5 <= female <= 0.72
    assert 0.03 <= (groups == 2).mean() <= 0.13
    assert 0.37 <= (groups == 0).mean() <= 0.57
    assert {r["race"] for r in rows} == set(RACES)


def test_existing_folder_is_refused_without_force(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CompError):
        write_synth(out, people=2, eval_people=1, size=(16, 16))
    assert (out / "keep.txt").read_text() == "mine"
    write_synth(out, people=2, eval_people=1, size=(16, 16), force=True)
    assert not (out / "keep.txt").exists()
    assert (out / "train" / "train.csv").is_file()


@pytest.mark.parametrize("kwargs", [
    {"label_noise": 1.5}, {"people": 0}, {"eval_people": 0}, {"size": (8, 8)}, {"seed": -1}, {"workers": 0},
])
def test_bad_arguments_raise_comp_error(tmp_path, kwargs):
    with pytest.raises(CompError):
        write_synth(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()
