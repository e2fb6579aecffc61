"""`comp report`: one self-contained HTML page about a run, and its figures as PNGs beside it.

    DIR/index.html                 every figure embedded (base64), so the page can be mailed or archived alone
    DIR/curves.png                 loss and validation F1 per epoch, per fold
    DIR/confusion_{18,mask,gender,age}.png
    DIR/f1_per_class.png, DIR/class_counts.png, DIR/class_counts_validation.png
    DIR/mistakes_gradcam_NN.png    the most confident validation mistakes, with Grad-CAM
    DIR/submission_*.png           with --submission and an answer key

Validation figures pool every trained fold's best-epoch predictions (the OOF predictions when all folds
were trained).
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics, runs
from .config import Config, read_run_config
from .data import labels as L
from .data.reader import load_truth, read_truth
from .errors import CompError
from .fileio import atomic_dir
from .submission import dataset_root, read_submission

SCORE_KEYS = ("f1", "f1_mask", "f1_gender", "f1_age", "acc")
SCORE_HEADER = ["F1", "mask F1", "gender F1", "age F1", "accuracy"]

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; max-width: 1240px;
       margin: 0 auto; padding: 1.5em 2em 4em; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #d0d7de; padding-bottom: 0.2em; margin-top: 2em; }
nav { position: sticky; top: 0; background: #fff; padding: 0.5em 0; border-bottom: 1px solid #eaeef2; z-index: 1; }
nav a { margin-right: 1.2em; color: #0969da; text-decoration: none; }
.subtitle { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #d8dee4; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
tr.total td { font-weight: 600; border-top: 2px solid #8c959f; }
table.kv td:first-child { color: #57606a; } table.kv td { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; margin: 0.8em 0; }
.figures.row figure { flex: 1 1 0; min-width: 0; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #eaeef2; }
figcaption { font-size: 0.85em; color: #57606a; } .note { color: #57606a; font-size: 0.92em; }
"""


@dataclass
class Section:
    id: str
    title: str
    body: str  # HTML: paragraphs, tables and figures


@dataclass
class Validation:
    """Every trained fold's best-epoch validation predictions, pooled."""
    index: np.ndarray  # rows of the run's train frame
    fold: np.ndarray
    probs: np.ndarray
    y: np.ndarray

    @property
    def pred(self) -> np.ndarray:
        return self.probs.argmax(1)


@dataclass
class ReportResult:
    out: Path
    html: Path
    pngs: list[Path]
    sections: list[str]
    validation: dict  # metrics.summarize of the pooled validation predictions
    submission: dict = field(default_factory=dict)  # part → scores, with --submission
    mistakes_shown: int = 0


# ------------------------------------------------------------------------------------------------ pieces
def _table(header: list[str], rows: list[list], classes: str = "", total_last: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="total"' if total_last and i == len(rows) - 1 else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _kv(rows: list[tuple[str, str]]) -> str:
    return '<table class="kv"><tbody>' + "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</tbody></table>"


def _figure(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}" data-file="{png.name}">'
            f"<figcaption>{html.escape(caption)} — <code>{png.name}</code></figcaption></figure>")


def _figures(*items: str, row: bool = False) -> str:
    """Figures side by side; `row` shrinks them to share one line (the per-head heatmaps)."""
    return f'<div class="figures{" row" if row else ""}">{"".join(items)}</div>'


def _p(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _scores_row(name: str, s: dict, *extra) -> list:
    return [name, *extra, *(f"{s[k]:.4f}" for k in SCORE_KEYS[:-1]), f"{s['acc']:.1%}"]


# --------------------------------------------------------------------------------------------- the data
def pooled_validation(run: Path, folds: list[int], df: pd.DataFrame) -> Validation:
    index, fold, probs = [], [], []
    for k in folds:
        p, rows = runs.read_fold_validation(runs.fold_dir(run, k))
        index.append(rows)
        probs.append(p)
        fold.append(np.full(len(index[-1]), k))
    index = np.concatenate(index)
    return Validation(index, np.concatenate(fold), np.concatenate(probs), df["label"].to_numpy()[index])


@dataclass
class Scored:
    """A submission beside its answer key, in the submission's order."""
    name: str
    pred: np.ndarray
    truth: np.ndarray
    usage: np.ndarray


def load_scored(submission: Path | str, truth: Path | str | None) -> Scored:
    sub = read_submission(submission)
    if truth:
        key = read_truth(truth)
    else:  # the answer key beside the eval set it was predicted on (synthetic and benchmark sets have one)
        root = dataset_root(sub)
        key = load_truth(root) if root else None
    if key is None:
        raise CompError(f"{submission}: no answer key to score it against; pass --truth eval_truth.csv")
    key = key.set_index("ImageID")
    missing = set(sub.ids) - set(key.index)
    if missing:
        raise CompError(f"answer key lacks {len(missing)} of the submission's ImageIDs; is it the same eval set?")
    key = key.loc[sub.ids]
    return Scored(Path(submission).name, sub.ans, key["ans"].to_numpy(), key["Usage"].to_numpy())


# ---------------------------------------------------------------------------------------------- sections
def summary_section(run: Path, cfg: Config, folds: list[int], val: Validation, df: pd.DataFrame) -> Section:
    kv = [("run", str(run)), ("model", f"{cfg.model.name} ({cfg.model.head} head, weights {cfg.model.weights})"),
          ("image size", f"{cfg.data.size[0]}x{cfg.data.size[1]}"),
          ("age groups", " / ".join(runs.bins_of(cfg).names())),
          ("folds trained", f"{', '.join(map(str, folds))} (of {cfg.data.folds})"),
          ("epochs", str(cfg.train.epochs)),
          ("train images", f"{len(df)} ({df['person'].nunique()} people)")]
    rows = []
    for k in folds:
        done = runs.read_done(runs.fold_dir(run, k))
        best = done.get("best") or {}
        if best:
            rows.append(_scores_row(f"fold {k}", best, done["best_epoch"]))
    pooled = "OOF (all folds)" if len(folds) == cfg.data.folds else f"pooled validation ({len(val.y)} images)"
    rows.append(_scores_row(pooled, metrics.summarize(val.y, val.pred), ""))
    table = _table(["", "best epoch", *SCORE_HEADER], rows, "scores", total_last=True)
    return Section("summary", "Summary", _kv(kv) + "<h3>Validation scores (best epoch)</h3>" + table)


def curves_section(folder: Path, run: Path, folds: list[int]) -> Section:
    from .plots import save_curves

    histories = {f"fold {k}": runs.read_metrics(runs.fold_dir(run, k)) for k in folds}
    png = save_curves(histories, folder / "curves.png", f"{run.name}: training curves")
    return Section("curves", "Training curves", _figures(_figure(png, "loss and validation macro F1 per epoch")))


def _top_confusions(cm: np.ndarray, names: list[str], n: int = 8) -> str:
    off = cm.copy()
    np.fill_diagonal(off, 0)
    pairs = [divmod(int(i), len(cm)) for i in np.argsort(-off, axis=None, kind="stable")[:n]]
    rows = [[names[t], names[p], str(off[t, p]), f"{off[t, p] / max(cm[t].sum(), 1):.0%}"]
            for t, p in pairs if off[t, p]]
    return _table(["true", "predicted as", "images", "share of the true class"], rows) if rows else ""


def confusion_section(folder: Path, y: np.ndarray, pred: np.ndarray, bins: L.AgeBins, prefix: str = "confusion",
                      what: str = "validation") -> tuple[str, str]:
    """(18×18 figure and the most frequent confusions, per-head figures) as HTML."""
    from .plots import save_confusion

    names = L.class_names(bins)
    cm = metrics.confusion(y, pred)
    big = _figure(save_confusion(cm, folder / f"{prefix}_18.png", names, f"{what}: 18 classes"), f"{what}, 18 classes")
    t, p = L.decode_heads(y), L.decode_heads(pred)
    heads = [_figure(save_confusion(metrics.confusion(t[h], p[h], L.HEAD_SIZES[h]), folder / f"{prefix}_{h}.png",
                                    list(L.head_names(h, bins)), f"{what}: {h}"), f"{what}, {h} head")
             for h in L.HEADS]
    return _figures(big) + _top_confusions(cm, names), _figures(*heads, row=True)


def f1_section(folder: Path, val: Validation, bins: L.AgeBins) -> Section:
    from .plots import save_bars

    f1, _ = metrics.f1_per_class(metrics.confusion(val.y, val.pred))
    png = save_bars({"validation": f1}, L.class_names(bins), folder / "f1_per_class.png", "validation F1 per class",
                    "F1", ylim=(0, 1.05))
    return Section("f1", "F1 per class", _figures(_figure(png, "validation F1 per class")))


def counts_section(folder: Path, df: pd.DataFrame, val: Validation, bins: L.AgeBins) -> Section:
    from .plots import save_bars

    names = L.class_names(bins)
    train = save_bars({"train": np.bincount(df["label"], minlength=L.N_CLASSES)}, names, folder / "class_counts.png",
                      "train images per class", "images", fmt="{:.0f}")
    pair = {"true": np.bincount(val.y, minlength=L.N_CLASSES), "predicted": np.bincount(val.pred, minlength=L.N_CLASSES)}
    pred = save_bars(pair, names, folder / "class_counts_validation.png", "validation: true vs predicted",
                     "images", fmt="{:.0f}")
    return Section("counts", "Class counts", _figures(_figure(train, "train images per class"),
                                                      _figure(pred, "validation images per class, true and predicted")))


def submission_section(folder: Path, scored: Scored, bins: L.AgeBins) -> tuple[Section, dict]:
    from .plots import save_bars

    parts = {"public": scored.usage == "Public", "private": scored.usage == "Private",
             "all": np.ones(len(scored.pred), bool)}
    scores = {name: metrics.summarize(scored.truth[sel], scored.pred[sel]) | {"n": int(sel.sum())}
              for name, sel in parts.items() if sel.any()}
    table = _table(["part", "images", *SCORE_HEADER], [_scores_row(k, s, s["n"]) for k, s in scores.items()], "scores")
    big, heads = confusion_section(folder, scored.truth, scored.pred, bins, "submission_confusion", scored.name)
    f1 = {name: metrics.f1_per_class(metrics.confusion(scored.truth[sel], scored.pred[sel]))[0]
          for name, sel in parts.items() if name != "all" and sel.any()}
    names = L.class_names(bins)
    bars = save_bars(f1, names, folder / "submission_f1.png", f"{scored.name}: F1 per class", "F1", ylim=(0, 1.05))
    counts = save_bars({"true": np.bincount(scored.truth, minlength=L.N_CLASSES),
                        "predicted": np.bincount(scored.pred, minlength=L.N_CLASSES)}, names,
                       folder / "submission_counts.png", f"{scored.name}: eval images per class", "images", fmt="{:.0f}")
    body = (table + big + heads + _figures(_figure(bars, "F1 per class, public and private"),
                                           _figure(counts, "eval images per class, answer key and submission")))
    return Section("submission", f"Submission {scored.name} against the answer key", body), scores


def mistakes_section(folder: Path, run: Path, cfg: Config, df: pd.DataFrame, val: Validation, n: int) -> tuple[Section, int]:
    """The validation images the model got wrong with the highest confidence, with the Grad-CAM of its decision."""
    from .explain import explain_picked, picked_rows, save_pages

    wrong = np.flatnonzero(val.pred != val.y)
    top = wrong[np.argsort(-val.probs[wrong].max(1), kind="stable")][:n]
    if not len(wrong):
        return Section("mistakes", "Most confident mistakes", _p("No validation mistakes.")), 0
    panels = []
    for k in np.unique(val.fold[top]):
        rows = top[val.fold[top] == k]
        model, head, _ = runs.load_run(run, int(k))
        panels += explain_picked(model, head, cfg, picked_rows(df.iloc[val.index[rows]]))[0]
    panels.sort(key=lambda p: -p.confidence)
    pngs = save_pages(panels, folder, "mistakes_gradcam", f"{run.name}: most confident validation mistakes")
    note = _p(f"{len(wrong)} of {len(val.y)} validation images are wrong; the {len(top)} the model was surest about, "
              "each as the photo and the photo with Grad-CAM of the 18-class decision (red: where it looked most).")
    return Section("mistakes", "Most confident mistakes", note + _figures(*(_figure(p, "Grad-CAM") for p in pngs))), len(top)


# ------------------------------------------------------------------------------------------------- page
def render(title: str, subtitle: str, sections: list[Section]) -> str:
    nav = "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{s.id}"><h2>{html.escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{html.escape(title)}</h1><p class="subtitle">{html.escape(subtitle)}</p>'
            f"<nav>{nav}</nav>{body}</body></html>\n")


def make_report(run: Path | str, out: Path | str, submission: Path | str | None = None, truth: Path | str | None = None,
                gallery: int = 12, force: bool = False) -> ReportResult:
    """Writes DIR/index.html and its PNGs for a trained run (and a scored submission)."""
    if truth and not submission:
        raise CompError("--truth scores a --submission; give the submission too")
    if gallery < 1:
        raise CompError(f"--gallery {gallery}: show at least one mistake")
    run, out = Path(run), Path(out)
    cfg = read_run_config(run)
    folds = runs.trained_folds(run)
    runs.require_held_out(run, "a report (report the k-fold run, with --submission for this run's CSV)")
    scored = load_scored(submission, truth) if submission else None  # a bad CSV fails before any work
    df = runs.train_frame(cfg)
    val = pooled_validation(run, folds, df)
    bins = runs.bins_of(cfg)
    with atomic_dir(out, force) as tmp:
        big, heads = confusion_section(tmp, val.y, val.pred, bins)
        sections = [summary_section(run, cfg, folds, val, df), curves_section(tmp, run, folds),
                    Section("confusion", "Confusion matrices (validation)", big + heads),
                    f1_section(tmp, val, bins), counts_section(tmp, df, val, bins)]
        sub_scores = {}
        if scored is not None:
            section, sub_scores = submission_section(tmp, scored, bins)
            sections.append(section)
        mistakes, shown = mistakes_section(tmp, run, cfg, df, val, gallery)
        sections.append(mistakes)
        page = render(f"Report: {run.name}", f"{cfg.model.name} · {cfg.model.head} head · folds "
                      f"{', '.join(map(str, folds))}", sections)
        (tmp / "index.html").write_text(page, encoding="utf-8")
        names = sorted(p.name for p in tmp.glob("*.png"))
    return ReportResult(out, out / "index.html", [out / n for n in names], [s.id for s in sections],
                        metrics.summarize(val.y, val.pred), sub_scores, shown)
