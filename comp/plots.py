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


def save_curves(histories: dict, path: Path | str, title: str = "") -> Path:
    """Loss (train solid, validation dashed) and validation macro F1 per epoch, one colour per fold; a star
    marks each fold's best epoch. `histories` maps a fold name to its metrics columns (epoch, train_loss,
    val_loss, f1)."""
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, f1_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        epoch, f1 = np.asarray(h["epoch"]), np.asarray(h["f1"])
        color = f"C{i}"
        loss_ax.plot(epoch, np.asarray(h["train_loss"]), color=color, label=f"{name} train")
        loss_ax.plot(epoch, np.asarray(h["val_loss"]), color=color, ls="--", label=f"{name} validation")
        f1_ax.plot(epoch, f1, color=color, marker="o", ms=3, label=name)
        best = int(np.argmax(f1))
        f1_ax.scatter(epoch[best], f1[best], marker="*", s=120, color=color, zorder=3)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    f1_ax.set(xlabel="epoch", ylabel="macro F1", title="validation macro F1", ylim=(0, 1))
    for ax in (loss_ax, f1_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def save_bars(series: dict[str, np.ndarray], names: list[str], path: Path | str, title: str = "", ylabel: str = "",
              fmt: str = "{:.2f}", ylim: tuple[float, float] | None = None) -> Path:
    """Grouped bars: one group per name (e.g. class), one bar per series (e.g. validation / public)."""
    n, k = len(names), len(series)
    width = 0.8 / k
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2), 4.2))
    for i, (label, values) in enumerate(series.items()):
        bars = ax.bar(np.arange(n) + (i - (k - 1) / 2) * width, np.asarray(values), width, label=label)
        if k <= 2:  # more labels than that overlap; zeros are left bare, they would only crowd
            ax.bar_label(bars, [fmt.format(v) if v else "" for v in np.asarray(values)], fontsize=6, padding=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    if k > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def save_image_grid(tiles: list[np.ndarray], captions: list[str], colors: list[str], path: Path | str,
                    title: str = "", cols: int = 4) -> Path:
    """Images in a grid, each with a coloured caption and frame (e.g. green right, red wrong)."""
    from matplotlib.patches import Rectangle

    cols = max(1, min(cols, len(tiles)))
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    tile_w = 2.6  # inches: at dpi 110, four tiles a row fit a 1200-pixel page without shrinking
    fig, axes = plt.subplots(rows, cols, figsize=(cols * tile_w, rows * (tile_w * h / w + 0.7) + 0.5),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile, caption, color in zip(axes.flat, tiles, captions, colors, strict=False):
        ax.imshow(tile)
        ax.set_title(caption, fontsize=8.5, color=color, loc="left")
        ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, lw=3, ec=color, clip_on=False))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
