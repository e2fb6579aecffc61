"""How M predictions of the same images become one: the blend methods, a registry of name → (function,
needs probabilities). `comp ensemble -m NAME` and the estimator's twins of blended CSVs both go through
`combine`, so a method added here works everywhere at once. Weights are per input; output in the inputs'
row order.

- vote      majority of answers; a tie goes to the input with the larger weight, then the one listed first.
- per-task  the answers decoded to (mask, gender, age), a vote per head with the same tie rule, encoded
            again: the heads err independently, so this often beats a plain vote.
- soft      arithmetic mean of the probabilities.
- geo       geometric mean of the probabilities (renormalised): an input sure a class is wrong vetoes it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .data import labels as L
from .errors import CompError
from .registry import Registry


@dataclass(frozen=True)
class Method:
    fn: Callable[..., np.ndarray]  # (answers (M, N) or probabilities (M, N, 18), weights (M,)) → result
    needs_probs: bool  # True: fn takes probabilities and returns (N, 18); False: answers → (N,) answers


METHODS = Registry("blend method", "--method")


def method(name: str, needs_probs: bool):
    def add(fn):
        METHODS.register(name, Method(fn, needs_probs))
        return fn
    return add


def weights_of(weights, m: int) -> np.ndarray:
    """Validated weights of M inputs (default equal)."""
    w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (m,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise CompError(f"--weights: need {m} non-negative numbers, not all 0 (got {list(np.atleast_1d(w))})")
    return w


def _weighted_vote(answers: np.ndarray, weights: np.ndarray, n_classes: int) -> np.ndarray:
    """answers (M, N) → (N,). Ties: the input with the larger weight, then the one listed first."""
    m, n = answers.shape
    score = np.zeros((n, n_classes))
    for i in range(m):
        np.add.at(score, (np.arange(n), answers[i]), weights[i])
    top = score == score.max(1, keepdims=True)
    out = np.full(n, -1, dtype=np.int64)
    for i in sorted(range(m), key=lambda i: (-weights[i], i)):  # the tie-break order
        take = (out < 0) & top[np.arange(n), answers[i]]
        out[take] = answers[i][take]
    return out


@method("vote", needs_probs=False)
def vote(answers, weights=None) -> np.ndarray:
    answers = np.asarray(answers, dtype=np.int64)
    return _weighted_vote(answers, weights_of(weights, len(answers)), L.N_CLASSES)


@method("per-task", needs_probs=False)
def per_task_vote(answers, weights=None) -> np.ndarray:
    answers = np.asarray(answers, dtype=np.int64)
    w = weights_of(weights, len(answers))
    heads = [L.decode_heads(a) for a in answers]
    voted = {h: _weighted_vote(np.stack([x[h] for x in heads]), w, L.HEAD_SIZES[h]) for h in L.HEADS}
    return np.asarray(L.encode(voted["mask"], voted["gender"], voted["age"]), dtype=np.int64)


@method("soft", needs_probs=True)
def soft(probs, weights=None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    w = weights_of(weights, len(p))
    return np.tensordot(w / w.sum(), p, axes=1)


@method("geo", needs_probs=True)
def geo(probs, weights=None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    w = weights_of(weights, len(p))
    logp = np.tensordot(w / w.sum(), np.log(np.clip(p, 1e-8, 1.0)), axes=1)
    e = np.exp(logp - logp.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def combine(method: str, answers: np.ndarray, probs: np.ndarray | None, weights=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The blend of M inputs by `method`: answers (M, N) and, for methods that need them, probabilities
    (M, N, 18) → (answers (N,), probabilities (N, 18) or None)."""
    m = METHODS.resolve(method, "--method")
    if not m.needs_probs:
        return m.fn(answers, weights), None
    if probs is None:
        raise CompError(f"--method {method} blends probabilities, and an input has none (.probs.npy)")
    blended = m.fn(probs, weights)
    return blended.argmax(1), blended
