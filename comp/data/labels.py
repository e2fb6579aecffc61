"""The 18-class codec: class = 6·mask + 3·gender + age group.

This module is the only place that knows the formula. Everything else (reader, heads, ensembling,
per-head metrics, reports) goes through `encode` / `decode` / `heads_from_probs` / `probs_from_heads`.

mask:   mask1..mask5 → 0 (wear), incorrect_mask → 1, normal → 2
gender: male → 0, female → 1
age:    age < young_below → 0, young_below ≤ age < old_from → 1, age ≥ old_from → 2
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_MASK, N_GENDER, N_AGE = 3, 2, 3
N_CLASSES = N_MASK * N_GENDER * N_AGE  # 18
HEADS = ("mask", "gender", "age")
HEAD_SIZES = {"mask": N_MASK, "gender": N_GENDER, "age": N_AGE}

MASK_STEMS = ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
STEM_TO_MASK = {"mask1": 0, "mask2": 0, "mask3": 0, "mask4": 0, "mask5": 0, "incorrect_mask": 1, "normal": 2}
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
GENDERS = ("male", "female")
GENDER_TO_ID = {g: i for i, g in enumerate(GENDERS)}
MASK_NAMES = ("wear", "incorrect", "normal")


@dataclass(frozen=True)
class AgeBins:
    """Age group thresholds. The competition uses 30 and 60; teams moved `old_from` to 58 because
    labels near 60 are scarce and noisy."""

    young_below: int = 30
    old_from: int = 60

    def __post_init__(self):
        if not 0 < self.young_below < self.old_from:
            raise ValueError(f"age bins need 0 < young_below < old_from, got {self.young_below}, {self.old_from}")

    def group(self, age):
        """Age (scalar or array) → age group 0/1/2."""
        a = np.asarray(age)
        g = (a >= self.young_below).astype(np.int64) + (a >= self.old_from).astype(np.int64)
        return int(g) if g.ndim == 0 else g

    def names(self) -> tuple[str, str, str]:
        return (f"<{self.young_below}", f"{self.young_below}-{self.old_from - 1}", f">={self.old_from}")


def encode(mask, gender, age_group):
    """(mask, gender, age group) → class id; works on scalars and numpy arrays."""
    m, g, a = (np.asarray(x, dtype=np.int64) for x in (mask, gender, age_group))
    if (m < 0).any() or (m >= N_MASK).any() or (g < 0).any() or (g >= N_GENDER).any() \
            or (a < 0).any() or (a >= N_AGE).any():
        raise ValueError("mask must be 0-2, gender 0-1, age group 0-2")
    c = 6 * m + 3 * g + a
    return int(c) if c.ndim == 0 else c


def decode(label):
    """class id → (mask, gender, age group); scalars or arrays."""
    c = np.asarray(label, dtype=np.int64)
    if (c < 0).any() or (c >= N_CLASSES).any():
        raise ValueError(f"class ids must lie in 0-{N_CLASSES - 1}")
    m, g, a = c // 6, (c // 3) % 2, c % 3
    if c.ndim == 0:
        return int(m), int(g), int(a)
    return m, g, a


def decode_heads(label) -> dict[str, np.ndarray]:
    """class ids → {'mask': ..., 'gender': ..., 'age': ...} arrays."""
    m, g, a = decode(np.atleast_1d(label))
    return {"mask": m, "gender": g, "age": a}


def class_names(bins: AgeBins = AgeBins()) -> list[str]:
    """Display names of the 18 classes, e.g. '7 incorrect/male/30-59'."""
    ages = bins.names()
    return [f"{c} {MASK_NAMES[c // 6]}/{GENDERS[(c // 3) % 2]}/{ages[c % 3]}" for c in range(N_CLASSES)]


def head_names(head: str, bins: AgeBins = AgeBins()) -> tuple[str, ...]:
    return {"mask": MASK_NAMES, "gender": GENDERS, "age": bins.names()}[head]


# The 18 x head one-hot maps: probs18 @ _HEAD_MAP[h] marginalises onto head h.
_CLASSES = np.arange(N_CLASSES)
_HEAD_MAP = {
    h: np.eye(HEAD_SIZES[h], dtype=np.float64)[v]
    for h, v in zip(HEADS, (_CLASSES // 6, (_CLASSES // 3) % 2, _CLASSES % 3), strict=True)
}


def head_maps() -> dict[str, np.ndarray]:
    """{head: (18, head size) 0/1 matrix}: `probs18 @ map` marginalises class probabilities onto a head."""
    return {h: m.copy() for h, m in _HEAD_MAP.items()}


def heads_from_probs(probs) -> dict[str, np.ndarray]:
    """(N, 18) class probabilities → per-head marginals {'mask': (N,3), 'gender': (N,2), 'age': (N,3)}."""
    p = np.asarray(probs, dtype=np.float64)
    return {h: p @ _HEAD_MAP[h] for h in HEADS}


def probs_from_heads(mask, gender, age):
    """Per-head probabilities (N,3), (N,2), (N,3) → (N, 18) joint, assuming the heads independent.
    Works for numpy arrays and torch tensors (the multitask head uses it on logits' softmaxes)."""
    joint = mask[:, :, None, None] * gender[:, None, :, None] * age[:, None, None, :]
    return joint.reshape(mask.shape[0], N_CLASSES)
