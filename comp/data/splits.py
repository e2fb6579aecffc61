"""Person-level folds: one person's seven photos always land in the same fold.

Stratified on each person's gender x age group (the heads that vary by person; mask varies within a
person and is balanced by construction), deterministic for a seed.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import CompError


def assign_folds(df: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Returns a copy of `df` (one row per image, with person, gender_id, age_group) with a `fold` column."""
    people = df.groupby("person", sort=True)[["gender_id", "age_group"]].first()
    if n_folds < 2:
        raise CompError(f"n_folds={n_folds}: need at least 2 folds")
    if len(people) < n_folds:
        raise CompError(f"only {len(people)} people for {n_folds} folds; lower data.folds")
    strata = (people["gender_id"] * 3 + people["age_group"]).to_numpy()
    # StratifiedGroupKFold on the person table: each person is its own group, so folds split people.
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = np.empty(len(people), dtype=np.int64)
    with warnings.catch_warnings():  # a stratum rarer than n_folds cannot reach every fold; that is fine
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(np.zeros(len(people)), strata, groups=np.arange(len(people))))
    for k, (_, idx) in enumerate(splits):
        fold_of[idx] = k
    out = df.copy()
    out["fold"] = out["person"].map(pd.Series(fold_of, index=people.index)).astype(np.int64)
    return out
