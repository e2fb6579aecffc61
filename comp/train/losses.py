"""Losses on soft targets: every target is an (N, K) distribution, so label smoothing, Mixup/CutMix and
the multitask marginals all use the same code.

Registry `LOSSES`: `ce` (cross entropy), `focal` (Lin et al. 2017), `soft_f1` (1 − differentiable macro
F1); `loss.terms` is a weighted sum of them, e.g. {focal: 1.0, soft_f1: 0.5}. Hard labels become soft
targets with timm's `mixup_target` (label smoothing included), the same helper timm's Mixup uses.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import LossConfig
from ..data import labels as L
from ..models import Head
from ..registry import Registry

LOSSES = Registry("loss", "loss.terms")
CLASS_WEIGHTS = Registry("class weighting", "loss.class_weights")


def _weighted_mean(per_sample: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    if w is None:
        return per_sample.mean()
    sw = target @ w  # each sample weighs as its (soft) class does, like torch's weighted cross entropy
    return (per_sample * sw).sum() / sw.sum().clamp_min(1e-12)


@LOSSES.register("ce")
def cross_entropy(logits, target, w=None, **_):
    return _weighted_mean(-(target * F.log_softmax(logits, 1)).sum(1), target, w)


@LOSSES.register("focal")
def focal(logits, target, w=None, gamma: float = 2.0, **_):
    logp = F.log_softmax(logits, 1)
    return _weighted_mean(-(target * (1 - logp.exp()).pow(gamma) * logp).sum(1), target, w)


@LOSSES.register("soft_f1")
def soft_f1(logits, target, **_):
    """1 − macro F1 computed with probabilities instead of hard counts, over the classes the batch holds
    (mass put on the others still lowers their TP). Optimises the metric directly but is noisy on small
    batches, so it is best mixed with ce or focal."""
    p = F.softmax(logits, 1)
    tp = (p * target).sum(0)
    fp = (p * (1 - target)).sum(0)
    fn = ((1 - p) * target).sum(0)
    present = target.sum(0) > 1e-3
    return 1 - (2 * tp / (2 * tp + fp + fn + 1e-7))[present].mean()


CLASS_WEIGHTS.register("none", None)
CLASS_WEIGHTS.register("inverse", lambda share: 1.0 / share)  # n / count
CLASS_WEIGHTS.register("sqrt", lambda share: np.sqrt(1.0 / share))  # its square root: gentler


def class_weights(counts: np.ndarray, mode: str) -> np.ndarray | None:
    """Per-class weights from train counts, mean 1 (None for `none`)."""
    fn = CLASS_WEIGHTS.resolve(mode)
    if fn is None:
        return None
    c = np.maximum(np.asarray(counts, np.float64), 1.0)
    w = fn(c / c.sum())
    return w / w.mean()


class Criterion:
    """Weighted sum of loss terms, per head: called with logits and an (N, 18) soft target."""

    def __init__(self, cfg: LossConfig, head: Head, train_labels: np.ndarray | None = None):
        for name in cfg.terms:
            LOSSES.check(name)
        self.terms, self.gamma, self.head = dict(cfg.terms), cfg.focal_gamma, head
        labels = np.zeros(0, np.int64) if train_labels is None else np.asarray(train_labels)
        if head.kind == "multiclass":
            w = class_weights(np.bincount(labels, minlength=L.N_CLASSES), cfg.class_weights)
            self.weights = {"all": None if w is None else torch.tensor(w, dtype=torch.float32)}
        else:
            heads = L.decode_heads(labels)
            self.weights = {}
            for h in L.HEADS:
                w = class_weights(np.bincount(heads[h], minlength=L.HEAD_SIZES[h]), cfg.class_weights)
                self.weights[h] = None if w is None else torch.tensor(w, dtype=torch.float32)
        self.maps = {h: torch.tensor(m, dtype=torch.float32) for h, m in L.head_maps().items()}

    def _sum(self, logits, target, w):
        if w is not None:
            w = w.to(logits.device)
        return sum(k * LOSSES[name](logits, target, w=w, gamma=self.gamma) for name, k in self.terms.items())

    def __call__(self, logits: torch.Tensor, target18: torch.Tensor) -> torch.Tensor:
        logits, target18 = logits.float(), target18.float()
        if self.head.kind == "multiclass":
            return self._sum(logits, target18, self.weights["all"])
        out = logits.new_zeros(())
        for h, part in self.head.split(logits).items():
            out = out + self.head.weights[h] * self._sum(part, target18 @ self.maps[h].to(logits.device), self.weights[h])
        return out
