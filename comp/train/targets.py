"""Training targets: every train image has an (18,) class distribution, Mixup/CutMix mixes those rows, and
label smoothing spreads a little mass over all classes.

`loss.age_sigma` (years, 0 = off) softens the age group: a person's recorded age is taken as uncertain by
a normal error of that size, so a 59-year-old trains as ~40 % ">=60" at σ = 2 and a 45-year-old as
certainly 30-59. Ages near the group boundaries (the hard 58-60 part) stop being all-or-nothing, which is
the principled form of the teams' trick of moving the cut to 58.

Mixing works on rows of the batch, whatever they hold: timm's Mixup is asked to mix the batch's own
positions (target = 0..B-1 over B "classes"), which returns x mixed and the (B, B) mixing matrix M; the
mixed targets are M @ the rows' distributions. With hard labels this is exactly timm's mixup_target.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm
from timm.data import Mixup

from ..config import MixupConfig
from ..data import labels as L


def age_distribution(ages: np.ndarray, bins: L.AgeBins, sigma: float) -> np.ndarray:
    """(n, 3) probability of each age group for recorded ages, under a N(0, sigma²) error on the age (a
    recorded age a means a year in [a, a+1), taken at a + 0.5). sigma = 0: the one-hot group."""
    ages = np.asarray(ages, np.float64)
    if sigma <= 0:
        return np.eye(L.N_AGE)[bins.group(ages.astype(np.int64))]
    below_young = norm.cdf(bins.young_below, ages + 0.5, sigma)
    below_old = norm.cdf(bins.old_from, ages + 0.5, sigma)
    return np.stack([below_young, below_old - below_young, 1 - below_old], 1)


def target_table(labels: np.ndarray, ages: np.ndarray | None, bins: L.AgeBins, age_sigma: float) -> torch.Tensor:
    """(n, 18) training distribution of each image: its mask and gender as labelled, its age group one-hot
    or softened by age_sigma."""
    labels = np.asarray(labels, np.int64)
    m, g, a = L.decode(labels)
    if age_sigma > 0 and ages is not None:
        dist = age_distribution(ages, bins, age_sigma)
    else:
        dist = np.eye(L.N_AGE)[a]
    table = np.zeros((len(labels), L.N_CLASSES), np.float32)
    for group in range(L.N_AGE):
        table[np.arange(len(labels)), L.encode(m, g, np.full_like(m, group))] = dist[:, group]
    return torch.from_numpy(table)


def create_mixup(m: MixupConfig, batch_size: int) -> Mixup | None:
    """timm's Mixup/CutMix set up to mix batch positions (see the module docstring); None when both are off."""
    if m.mixup_alpha <= 0 and m.cutmix_alpha <= 0:
        return None
    return Mixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                 label_smoothing=0.0, num_classes=batch_size)


class Targets:
    """Builds a batch's inputs and soft targets from the images' rows in the train subset."""

    def __init__(self, table: torch.Tensor, smoothing: float, mixup: Mixup | None):
        self.table, self.smoothing, self.mixup = table, smoothing, mixup

    def __call__(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.table.device != x.device:  # once: indexing on the device costs no host sync per step
            self.table = self.table.to(x.device)
        target = self.table[rows.to(x.device)]
        if self.mixup is not None and self.mixup.mixup_enabled:
            b = len(x)
            x, mixing = self.mixup(x, torch.arange(b, device=x.device))
            target = mixing[:, :b] @ target
        return x, target * (1 - self.smoothing) + self.smoothing / L.N_CLASSES
