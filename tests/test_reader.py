import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from comp.cli import app
from comp.data import labels as L
from comp.data.images import read_image
from comp.data.reader import load_eval, load_train
from comp.errors import CompError

from .conftest import UTKMASK, needs_utkmask


def test_reads_synthetic_tree(tiny_root):
    df = load_train(tiny_root)
    meta = pd.read_csv(tiny_root / "train" / "train.csv", dtype=str)
    assert len(df) == 7 * len(meta)
    assert all(sorted(v) == sorted(L.MASK_STEMS) for v in df.groupby("person")["stem"].apply(list))
    for r in df.itertuples():
        assert os.path.isfile(r.path)
        assert r.image.split("/")[0].startswith(f"{r.person}_{r.gender}_")
        assert r.label == 6 * L.STEM_TO_MASK[r.stem] + 3 * L.GENDER_TO_ID[r.gender] + L.AgeBins().group(r.age)
    ev = load_eval(tiny_root)
    info = pd.read_csv(tiny_root / "eval" / "info.csv", dtype=str)
    assert ev["ImageID"].tolist() == info["ImageID"].tolist()
    assert all(os.path.isfile(p) for p in ev["path"])


def test_age_threshold_is_a_setting(tiny_root):
    a = load_train(tiny_root, bins=L.AgeBins(30, 60))
    b = load_train(tiny_root, bins=L.AgeBins(30, 40))
    assert (b["age_group"] >= a["age_group"]).all()
    assert (b["age_group"] > a["age_group"]).any()


def _person(root):
    return sorted(p for p in (root / "train" / "images").iterdir())[0]


def test_hidden_files_and_other_extensions_are_accepted(tiny_copy):
    person = _person(tiny_copy)
    (person / "._mask1.jpg").write_bytes(b"\x00\x05\x16\x07 apple double")
    (person / ".DS_Store").write_bytes(b"junk")
    (person / "Thumbs.db").write_bytes(b"junk")
    (person / "desktop.ini").write_text("[.ShellClassInfo]")
    Image.open(person / "normal.jpg").save(person / "normal.png")
    (person / "normal.jpg").unlink()
    (person / "mask2.jpg").rename(person / "mask2.jpeg")
    df = load_train(tiny_copy)
    rows = df[df["image"].str.startswith(person.name + "/")]
    assert sorted(rows["image"].str.split("/").str[1]) == sorted(
        ["mask1.jpg", "mask2.jpeg", "mask3.jpg", "mask4.jpg", "mask5.jpg", "incorrect_mask.jpg", "normal.png"])
    assert read_image(rows[rows["stem"] == "normal"]["path"].iat[0]).shape[2] == 3


def _rewrite_csv(root, fn):
    p = root / "train" / "train.csv"
    df = pd.read_csv(p, dtype=str)
    fn(df).to_csv(p, index=False)


def _rename_person(root, new_name, **csv_fields):
    person = _person(root)
    person.rename(person.parent / new_name)

    def edit(df):
        i = df.index[df["path"] == person.name][0]
        df.loc[i, "path"] = new_name
        for k, v in csv_fields.items():
            df.loc[i, k] = v
        return df
    _rewrite_csv(root, edit)


BREAKAGES = {
    "folder name is not <id>_<gender>_<race>_<age>": lambda r: _rename_person(r, "badname"),
    "unknown gender word": lambda r: _rename_person(r, "000999_alien_Asian_40", id="000999", gender="alien", age="40"),
    "is not an integer": lambda r: _rename_person(r, "000999_male_Asian_forty", id="000999", gender="male", age="forty"),
    "unknown image file": lambda r: shutil.copy(_person(r) / "mask1.jpg", _person(r) / "mask6.jpg"),
    "missing the normal shot": lambda r: (_person(r) / "normal.jpg").unlink(),
    "duplicated shot": lambda r: Image.open(_person(r) / "mask1.jpg").save(_person(r) / "mask1.png"),
    "names a folder that does not exist": lambda r: shutil.rmtree(_person(r)),
    "not listed in train.csv": lambda r: _rewrite_csv(r, lambda df: df.iloc[1:]),
    "disagrees with its folder name": lambda r: _rewrite_csv(r, lambda df: df.assign(age=df["age"].where(df.index > 0, "1"))),
    "has no image in eval/images": lambda r: sorted((r / "eval" / "images").iterdir())[0].unlink(),
}


@pytest.mark.parametrize("message", list(BREAKAGES))
def test_each_bad_input_gives_its_clear_error(tiny_copy, message):
    BREAKAGES[message](tiny_copy)
    with pytest.raises(CompError) as e:
        load_train(tiny_copy)
        load_eval(tiny_copy)
    assert message in str(e.value)
    assert len(e.value.lines) == 1, e.value.lines  # one line per kind of problem
    assert str(tiny_copy) in str(e.value) or "info.csv" in str(e.value)  # names the file or row
    result = CliRunner().invoke(app, ["data", "check", str(tiny_copy)])
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ")


def test_corrupt_image_is_found_lazily_and_by_deep_check(tiny_copy):
    bad = _person(tiny_copy) / "mask3.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    df = load_train(tiny_copy)  # listing does not decode
    with pytest.raises(CompError, match="corrupt"):
        read_image(df[df["path"] == str(bad)]["path"].iat[0])
    assert CliRunner().invoke(app, ["data", "check", str(tiny_copy)]).exit_code == 0
    deep = CliRunner().invoke(app, ["data", "check", str(tiny_copy), "--deep"])
    assert deep.exit_code == 2
    assert "mask3.jpg" in deep.output.replace("\n", "")


def test_relabel_fixes_person_and_image_labels(tiny_copy):
    df = load_train(tiny_copy)
    person = df["person"].iat[0]
    was = df[df["person"] == person].iloc[0]
    new_gender = "female" if was["gender"] == "male" else "male"
    image = df[(df["person"] == person) & (df["stem"] == "normal")]["image"].iat[0]
    fixes = tiny_copy / "fixes.csv"
    pd.DataFrame({"id": [person, ""], "image": ["", image], "gender": [new_gender, ""], "age": ["61", ""],
                  "mask": ["", "incorrect"]}).to_csv(fixes, index=False)
    fixed = load_train(tiny_copy, relabel=fixes)
    mine = fixed[fixed["person"] == person]
    assert (mine["gender"] == new_gender).all() and (mine["age_group"] == 2).all()
    assert mine[mine["image"] == image]["mask"].iat[0] == 1
    assert (fixed[fixed["person"] != person]["label"].to_numpy() == df[df["person"] != person]["label"].to_numpy()).all()
    pd.DataFrame({"id": ["nobody"], "gender": ["male"]}).to_csv(fixes, index=False)
    with pytest.raises(CompError, match="matches no train image"):
        load_train(tiny_copy, relabel=fixes)


@needs_utkmask
def test_utkmask_counts():
    df = load_train(UTKMASK)
    assert df["person"].nunique() == 1050 and len(df) == 7350
    assert len(load_eval(UTKMASK)) == 3143
    meta = pd.read_csv(UTKMASK / "train" / "train.csv")
    person_cls = 3 * (meta["gender"] == "female") + (meta["age"] >= 30) + (meta["age"] >= 60)
    per_person = np.bincount(person_cls, minlength=6)
    expected = np.concatenate([5 * per_person, per_person, per_person])  # 5 wear shots, 1 incorrect, 1 normal
    assert np.array_equal(np.bincount(df["label"], minlength=18), expected)


# How a camera stores each EXIF orientation: the inverse of the turn that makes the photo upright.
_STORED = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
           7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", sorted(_STORED))
def test_photos_are_read_upright_by_their_exif_orientation(tmp_path, fmt, orientation):
    # upright: a portrait 96x128 photo, a bright top-left corner, a mid-grey top-right one
    upright = np.zeros((128, 96, 3), np.uint8)
    upright[:64, :48] = 250
    upright[:64, 48:] = 120
    im = Image.fromarray(upright)
    stored = im if _STORED[orientation] is None else im.transpose(_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo.{fmt.lower()}"
    stored.save(path, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))

    got = read_image(path).astype(int)
    assert got.shape == upright.shape
    assert np.abs(got - upright).mean() < 3
    # decoded at reduced scale for a small training size: still upright, never below the size asked
    small = read_image(path, min_size=(24, 32))
    assert small.shape[0] >= 32 and small.shape[1] >= 24 and small.shape[0] > small.shape[1]
    h, w = small.shape[:2]
    corners = [small[: h // 4, : w // 4].mean(), small[: h // 4, -w // 4:].mean(), small[-h // 4:].mean()]
    assert corners[0] > 200 and 90 < corners[1] < 150 and corners[2] < 30
    wide = read_image(path, min_size=(60, 30))  # a size of the other aspect: sideways files scale by their own
    assert wide.shape[1] >= 60 and wide.shape[0] >= 30


def test_deep_check_profiles_the_images_and_warns_where_eval_differs_from_train(tiny_copy):
    from comp.data.check import check_dataset

    assert check_dataset(tiny_copy).images is None  # the default check opens no image
    person = _person(tiny_copy)
    normal = Image.open(person / "normal.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    normal.rotate(90, expand=True).save(person / "normal.jpg", exif=exif)  # a phone's sideways photo
    evals = sorted((tiny_copy / "eval" / "images").iterdir())
    for p in evals[: len(evals) // 2]:  # half of eval: grayscale, twice the size
        im = Image.open(p)
        im.convert("L").resize((im.width * 2, im.height * 2)).save(p, format="JPEG")

    r = check_dataset(tiny_copy, deep=True)
    train, ev = r.images["train"], r.images["eval"]
    assert (train.images, ev.images) == (len(r.train), len(r.eval))
    size = (normal.width, normal.height)
    assert train.sizes == {size: train.images}  # the sideways photo counts by its upright size
    assert train.rotated == 1 and ev.rotated == 0
    assert ev.sizes[(size[0] * 2, size[1] * 2)] == len(evals) // 2 and ev.gray == pytest.approx(0.5, abs=0.05)
    text = " ".join(r.warnings)
    assert "of eval images are not" in text and "grayscale images: 0% of train, 50% of eval" in text
    assert "1 train images are stored sideways" in text
    out = CliRunner().invoke(app, ["data", "check", str(tiny_copy), "--deep"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "EXIF-rotated" in out.output and f"{size[0] * 2}x{size[1] * 2} 50%" in out.output
