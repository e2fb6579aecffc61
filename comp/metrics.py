"""Scores, in one place: macro F1 (the competition's metric), F1 per head, accuracy, confusion matrices.

Macro F1 is computed from a confusion matrix with numpy (bincount), averaging over the classes present
in truth or prediction exactly like sklearn's `f1_score(average="macro")` and the leaderboard; it is
written out because the estimator evaluates it thousands of times per call.
"""
from __future__ import annotations

import numpy as np

from .data import labels as L


def confusion(y_true, y_pred, n: int = L.N_CLASSES) -> np.ndarray:
    """(n, n) counts, rows = truth, columns = prediction."""
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y * n + p, minlength=n * n).reshape(n, n)


def f1_per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 and a mask of the classes present in truth or prediction."""
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0), denom > 0


def f1_from_confusion(cm: np.ndarray) -> float:
    f1, present = f1_per_class(cm)
    return float(f1[present].mean()) if present.any() else 0.0


def macro_f1(y_true, y_pred, n: int = L.N_CLASSES) -> float:
    return f1_from_confusion(confusion(y_true, y_pred, n))


def head_f1(y_true, y_pred) -> dict[str, float]:
    """Macro F1 of each head (mask / gender / age) from 18-class labels."""
    t, p = L.decode_heads(y_true), L.decode_heads(y_pred)
    return {h: macro_f1(t[h], p[h], L.HEAD_SIZES[h]) for h in L.HEADS}


def summarize(y_true, y_pred) -> dict[str, float]:
    """The per-epoch / per-run scores: f1 (18-class macro), f1_mask, f1_gender, f1_age, acc."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    out = {"f1": macro_f1(y, p)}
    out.update({f"f1_{h}": v for h, v in head_f1(y, p).items()})
    out["acc"] = float((y == p).mean()) if len(y) else 0.0
    return out


def leaderboard(pred, truth_ans, usage) -> dict[str, dict[str, float]]:
    """Public / private macro F1 and accuracy (in percent), as the leaderboard shows them."""
    pred, truth_ans, usage = np.asarray(pred), np.asarray(truth_ans), np.asarray(usage)
    out = {}
    for part in ("Public", "Private"):
        sel = usage == part
        out[part.lower()] = {"f1": macro_f1(truth_ans[sel], pred[sel]),
                             "acc": 100.0 * float((truth_ans[sel] == pred[sel]).mean()) if sel.any() else 0.0,
                             "n": int(sel.sum())}
    return out
