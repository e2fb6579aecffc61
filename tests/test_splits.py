import numpy as np
import pandas as pd
import pytest

from comp.data import labels as L
from comp.data.splits import assign_folds
from comp.errors import CompError


def _people(n, seed=0):
    rng = np.random.default_rng(seed)
    gender = (rng.random(n) < 0.61).astype(int)
    age = rng.choice([20, 45, 65], size=n, p=[0.47, 0.46, 0.07])
    rows = [(f"{i:06d}", g, a, stem) for i, (g, a) in enumerate(zip(gender, age, strict=True)) for stem in L.MASK_STEMS]
    df = pd.DataFrame(rows, columns=["person", "gender_id", "age", "stem"])
    df["age_group"] = L.AgeBins().group(df["age"].to_numpy())
    df["label"] = L.encode(df["stem"].map(L.STEM_TO_MASK), df["gender_id"], df["age_group"])
    return df


def test_no_person_in_two_folds_and_every_image_in_one():
    df = assign_folds(_people(600), n_folds=5, seed=3)
    assert df["fold"].between(0, 4).all() and df["fold"].notna().all()
    assert (df.groupby("person")["fold"].nunique() == 1).all()
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]


def test_fold_class_shares_match_the_whole():
    df = assign_folds(_people(1000), n_folds=5, seed=0)
    whole = np.bincount(df["label"], minlength=18) / len(df)
    for _, part in df.groupby("fold"):
        share = np.bincount(part["label"], minlength=18) / len(part)
        assert np.abs(share - whole).max() < 0.03


def test_deterministic_by_seed():
    df = _people(200)
    a, b, c = (assign_folds(df, 5, seed=s)["fold"].to_numpy() for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_too_few_people():
    with pytest.raises(CompError, match="only 3 people"):
        assign_folds(_people(3), n_folds=5)
