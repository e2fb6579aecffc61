"""PNG figures a person would rather look at than read: confusion heatmaps, curves, bars."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .data import labels as L  # noqa: E402
from .fileio import atomic_path  # noqa: E402


def _save(fig, path: Path | str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def save_confusion(cm: np.ndarray, path: Path | str, names: list[str] | None = None, title: str = "") -> Path:
    """Row-normalised heatmap (each true class sums to 1) with the raw counts written in the cells."""
    cm = np.asarray(cm)
    n = len(cm)
    names = names or (L.class_names() if n == L.N_CLASSES else [str(i) for i in range(n)])
    rate = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    side = 3 + 0.45 * n
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7 if n > 6 else 10,
                        color="white" if rate[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), names, rotation=90, fontsize=7 if n > 6 else 9)
    ax.set_yticks(range(n), names, fontsize=7 if n > 6 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the true class")
    return _save(fig, path)
