"""`comp ensemble`: blend submissions, or fit a blend of runs on their out-of-fold predictions.

Blend methods on submission files: `comp.blend` (vote / per-task / soft / geo, weighted).

--fit on runs: Caruana et al. (2004) greedy forward selection with replacement on the runs' OOF
probabilities, maximising macro F1, then a per-class log-prior shift tuned for macro F1 (the principled form
of "call ≥ 58 old": rare classes get the bias they need to be predicted at the rate that maximises F1).
Both are cross-fitted: fitted on all folds but one and scored on the held-out fold, so the reported OOF F1
is honest; a step that does not beat the plain mean out of fold is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics, runs
from .blend import METHODS, combine, weights_of
from .data.reader import load_truth, read_truth
from .errors import CompError
from .fileio import refuse_overwrite
from .submission import (
    TWINS,
    Provenance,
    Submission,
    Twin,
    check_same_ids,
    common_images,
    dataset_root,
    read_submission,
    score,
    twin_of_file,
    write_submission,
)


@dataclass
class BlendResult:
    out: Path
    method: str
    names: list[str]
    agreement: np.ndarray  # (M, M) share of images where inputs i and j agree
    changed: list[int]  # rows of the result that differ from each input
    scores: dict[str, dict] = field(default_factory=dict)  # name → leaderboard scores, with an answer key


def _truth_for(subs: list[Submission], truth: Path | None):
    """The answer key: --truth, or eval_truth.csv beside the eval set the first input was predicted on."""
    if truth is not None:
        return read_truth(truth)
    root = dataset_root(subs[0])
    return load_truth(root) if root else None


def blend_files(paths: list[Path | str], out: Path | str, weights=None, method: str = "vote", force: bool = False,
                truth: Path | str | None = None) -> BlendResult:
    need_probs = METHODS.resolve(method, "--method").needs_probs
    if len(paths) < 2:
        raise CompError("give at least two submissions to blend")
    out = Path(out)
    refuse_overwrite(out, force, "submission")
    subs = [read_submission(p, need_probs=need_probs) for p in paths]
    check_same_ids(subs)
    subs = [subs[0]] + [s.reorder(subs[0].ids) for s in subs[1:]]
    w = weights_of(weights, len(subs))
    answers = np.stack([s.ans for s in subs])
    ans, probs = combine(method, answers, np.stack([s.probs for s in subs]) if need_probs else None, w)
    names = [s.path.name for s in subs]
    prov = Provenance(kind="blend", method=method, inputs=[str(s.path) for s in subs], weights=w.tolist(),
                      data=subs[0].prov.data)
    write_submission(out, subs[0].ids, ans, probs, prov, force=force)
    agreement = (answers[:, None, :] == answers[None, :, :]).mean(2)
    result = BlendResult(out, method, names, agreement, [int((a != ans).sum()) for a in answers])
    t = _truth_for(subs, Path(truth) if truth else None)
    if t is not None:
        for name, a in [*zip(names, answers, strict=True), (out.name, ans)]:
            result.scores[name] = score(subs[0].ids, a, t)
    return result


# ------------------------------------------------------------------------------------------- fitting
def greedy_select(probs: np.ndarray, y: np.ndarray, rounds: int | None = None) -> np.ndarray:
    """Caruana forward selection with replacement: repeatedly add the model whose inclusion gives the best
    macro F1 of the averaged probabilities. Returns weights (counts / total). Starts from the best single
    model; `rounds` additions at most (default 2·M keeps the selection small)."""
    m = len(probs)
    rounds = 2 * m if rounds is None else rounds
    counts = np.zeros(m)
    single = [metrics.macro_f1(y, p.argmax(1)) for p in probs]
    counts[int(np.argmax(single))] = 1
    total = probs[int(np.argmax(single))].astype(np.float64).copy()
    best = max(single)
    for _ in range(rounds):
        n = counts.sum()
        trial = [metrics.macro_f1(y, ((total + probs[i]) / (n + 1)).argmax(1)) for i in range(m)]
        i = int(np.argmax(trial))
        if trial[i] < best:  # ties are accepted: they let a second model join and smooth the blend
            break
        best, counts[i], total = trial[i], counts[i] + 1, total + probs[i]
    return counts / counts.sum()


BIAS_GRID = np.linspace(-2.0, 2.0, 21)


def tune_bias(probs: np.ndarray, y: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Per-class additive shift of the log-probabilities maximising macro F1 (coordinate ascent on a
    grid). argmax(log p + b) is a Bayes decision with adjusted class priors."""
    logp = np.log(np.clip(probs, 1e-8, 1.0))
    b = np.zeros(logp.shape[1])
    best = metrics.macro_f1(y, logp.argmax(1))
    for _ in range(rounds):
        moved = False
        for c in range(logp.shape[1]):
            for v in BIAS_GRID:
                if v == b[c]:
                    continue
                trial = b.copy()
                trial[c] = v
                f = metrics.macro_f1(y, (logp + trial).argmax(1))
                if f > best + 1e-9:
                    best, b, moved = f, trial, True
        if not moved:
            break
    return b


def apply_bias(probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Probabilities with the log-prior shift applied (renormalised), so files stay probabilities."""
    logp = np.log(np.clip(probs, 1e-8, 1.0)) + bias
    e = np.exp(logp - logp.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@dataclass
class FitPlan:
    weights: np.ndarray
    bias: np.ndarray
    oof: dict  # name → OOF summary; 'mean', 'greedy', 'greedy+bias' are cross-fitted (held-out folds)
    use_bias: bool
    greedy: bool  # False: greedy weights lost to the plain mean out of fold, so the weights are the mean


def cross_fitted(probs: np.ndarray, y: np.ndarray, folds: np.ndarray, greedy: bool = True,
                 with_bias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Held-out blends: for each group, the weights (greedy, or the plain mean) and a class bias fitted on
    the other groups and applied to it. Returns the blended probabilities without and with the bias,
    (N, 18) each (the second is the first when `with_bias` is False)."""
    held, held_b = np.zeros(probs.shape[1:]), np.zeros(probs.shape[1:])
    for k in np.unique(folds):
        fit, test = folds != k, folds == k
        w = greedy_select(probs[:, fit], y[fit]) if greedy else np.full(len(probs), 1.0 / len(probs))
        blend_fit, blend_test = np.tensordot(w, probs[:, fit], 1), np.tensordot(w, probs[:, test], 1)
        held[test] = blend_test
        held_b[test] = apply_bias(blend_test, tune_bias(blend_fit, y[fit])) if with_bias else blend_test
    return held, held_b


def fit_blend(probs: np.ndarray, y: np.ndarray, folds: np.ndarray, names: list[str]) -> FitPlan:
    """Cross-fitted greedy weights and class bias on OOF probabilities (M, N, 18) with labels and folds."""
    oof = {n: metrics.summarize(y, p.argmax(1)) for n, p in zip(names, probs, strict=True)}
    mean = probs.mean(0)
    oof["mean of runs"] = metrics.summarize(y, mean.argmax(1))
    held, held_b = cross_fitted(probs, y, folds)
    oof["greedy blend (held-out folds)"] = metrics.summarize(y, held.argmax(1))
    oof["greedy + bias (held-out folds)"] = metrics.summarize(y, held_b.argmax(1))
    greedy = oof["greedy blend (held-out folds)"]["f1"] >= oof["mean of runs"]["f1"]
    if greedy:
        weights, plain, biased = greedy_select(probs, y), "greedy blend (held-out folds)", "greedy + bias (held-out folds)"
    else:  # selection fitted noise: fall back to the mean, and judge the bias on the mean
        weights, plain, biased = np.full(len(probs), 1.0 / len(probs)), "mean of runs", "mean + bias (held-out folds)"
        oof[biased] = metrics.summarize(y, cross_fitted(probs, y, folds, greedy=False)[1].argmax(1))
    use_bias = oof[biased]["f1"] > oof[plain]["f1"]
    bias = tune_bias(np.tensordot(weights, probs, 1), y) if use_bias else np.zeros(probs.shape[2])
    return FitPlan(weights, bias, oof, use_bias, greedy)


@dataclass
class FitResult:
    out: Path
    names: list[str]
    plan: FitPlan
    scores: dict = field(default_factory=dict)  # leaderboard scores of each run and the blend, with a key
    folds: list[int] = field(default_factory=list)  # the held-out folds the blend was fitted on
    images: int = 0  # their images


def eval_probs(run: Path, data: Path | None, tta: str | None, ckpt: str) -> tuple[Submission, bool]:
    """The run's eval-set prediction, from `RUN/predictions/` or made now with `comp predict`."""
    from .config import read_run_config
    from .predict import predict

    cfg = read_run_config(run)
    tta = tta or cfg.predict.tta
    root = Path(data) if data else Path(cfg.data.root)
    path = run / "predictions" / f"eval-{tta}-{ckpt}.csv"
    if path.is_file():
        sub = read_submission(path, need_probs=True)
        if sub.prov.data == str(root):
            return sub, False
    predict([run], path, root, tta, ckpt, force=True)
    return read_submission(path, need_probs=True), True


def held_out(run: Path) -> pd.DataFrame:
    """Out-of-fold predictions of every fold, or, for a run trained on some folds only, the held-out
    predictions of those (a single-fold run still gets a fitted blend, on fewer images)."""
    if (run / "oof.parquet").is_file():
        return runs.read_oof(run)
    return runs.read_validation(run).sort_values("image", kind="stable").reset_index(drop=True)


def cross_fit_groups(oof: pd.DataFrame, k: int = 5) -> np.ndarray:
    """Groups for cross-fitting the blend: the training folds, or, when one fold alone was held out, k
    groups of its people (never one person in two groups, as in training)."""
    folds = oof["fold"].to_numpy()
    if len(np.unique(folds)) > 1:
        return folds
    people = np.unique(oof["person"].astype(str))
    group = dict(zip(people, np.arange(len(people)) % k, strict=True))
    return oof["person"].astype(str).map(group).to_numpy()


def held_out_probs(run_dirs: list[Path]) -> tuple[pd.DataFrame, np.ndarray]:
    """The runs' held-out predictions on the same images: the first run's table (image, label, fold, person)
    and the probabilities (M, N, 18). Runs trained on different folds (all five, and fold 0 alone) meet on the
    folds every one of them held out; runs that held out other images or labels there are refused."""
    oofs = [held_out(r) for r in run_dirs]
    trained = [set(o["fold"].unique().tolist()) for o in oofs]
    shared = set.intersection(*trained)
    if not shared:
        each = "; ".join(f"{r}: {','.join(map(str, sorted(t)))}" for r, t in zip(run_dirs, trained, strict=True))
        raise CompError(f"no fold was held out by every run (trained folds: {each}); fitted blends need one: "
                        "train the same fold (--fold K) for each")
    if any(t != shared for t in trained):
        oofs = [o[o["fold"].isin(shared)].sort_values("image", kind="stable").reset_index(drop=True) for o in oofs]
    for r, o in zip(run_dirs[1:], oofs[1:], strict=True):
        if not (o["image"].equals(oofs[0]["image"]) and o["label"].equals(oofs[0]["label"])
                and o["fold"].equals(oofs[0]["fold"])):
            raise CompError(f"{r}: its held-out images, labels or folds differ from {run_dirs[0]}'s; fitted blends "
                            "need runs on the same data with the same data.folds, data.split_seed, age bins and "
                            "trained folds")
    return oofs[0], np.stack([runs.oof_probs(o) for o in oofs]).astype(np.float64)


def fit(run_dirs: list[Path | str], out: Path | str, data: Path | str | None = None, tta: str | None = None,
        ckpt: str = "best", force: bool = False) -> FitResult:
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 1:
        raise CompError("--fit needs at least one run folder")
    out = Path(out)
    refuse_overwrite(out, force, "submission")
    oof, probs = held_out_probs(run_dirs)
    y, folds = oof["label"].to_numpy(), cross_fit_groups(oof)
    names = [r.name for r in run_dirs]
    plan = fit_blend(probs, y, folds, names)
    subs = [eval_probs(r, Path(data) if data else None, tta, ckpt)[0] for r in run_dirs]
    check_same_ids(subs)
    subs = [subs[0]] + [s.reorder(subs[0].ids) for s in subs[1:]]
    blended = apply_bias(np.tensordot(plan.weights, np.stack([s.probs for s in subs]).astype(np.float64), 1),
                         plan.bias)
    prov = Provenance(kind="fit", runs=[str(r) for r in run_dirs], weights=plan.weights.tolist(),
                      weighting="greedy" if plan.greedy else "mean", bias=plan.bias.tolist() if plan.use_bias else [],
                      data=subs[0].prov.data, tta=subs[0].prov.tta, ckpt=ckpt, stats={"oof": plan.oof})
    write_submission(out, subs[0].ids, blended.argmax(1), blended, prov, force=force)
    result = FitResult(out, names, plan, folds=sorted(oof["fold"].unique().tolist()), images=len(oof))
    t = _truth_for(subs, None)
    if t is not None:
        for name, s in zip(names, subs, strict=True):
            result.scores[name] = score(s.ids, s.ans, t)
        result.scores[out.name] = score(subs[0].ids, blended.argmax(1), t)
    return result


@TWINS.register("blend")
def blend_twin(prov: Provenance, with_probs: bool, depth: int = 0) -> Twin | None:
    """A blend's labelled twin: its inputs' twins on the images all of them held out, blended by the same
    `combine` with the same method and weights (inputs that are blends recurse)."""
    parts = [twin_of_file(p, depth + 1) for p in prov.inputs]
    if any(t is None for t in parts):
        return None
    common = common_images([t.images for t in parts])
    if not len(common):
        return None
    parts = [t.subset(common) for t in parts]
    needs_probs = METHODS[prov.method].needs_probs
    if needs_probs and any(t.probs is None for t in parts):
        return None
    probs = np.stack([t.probs for t in parts]) if needs_probs else None
    ans, probs = combine(prov.method, np.stack([t.ans for t in parts]), probs, prov.weights or None)
    return Twin(probs if with_probs else None, ans, parts[0].y, common,
                f"{prov.method} blend of {len(parts)} held-out twins")


@TWINS.register("fit")
def fit_twin(prov: Provenance, with_probs: bool, depth: int = 0) -> Twin | None:
    """The labelled twin of `comp ensemble --fit`: its weights (and class bias) fitted on the other
    cross-fitting groups and applied to each, as in its honest OOF table; the final weights were fitted on
    these very images, so their own held-out score would flatter the blend."""
    if prov.ckpt != "best":
        return None
    run_dirs = [Path(r) for r in prov.runs]
    try:
        oof, probs = held_out_probs(run_dirs)
    except CompError:
        return None
    y = oof["label"].to_numpy()
    use_bias = bool(np.any(prov.bias))
    held, held_b = cross_fitted(probs, y, cross_fit_groups(oof), greedy=prov.weighting != "mean",
                                with_bias=use_bias)
    blended = held_b if use_bias else held
    return Twin(blended if with_probs else None, blended.argmax(1), y, oof["image"].to_numpy(dtype=object),
                f"{len(y)} held-out images of the fitted blend of {', '.join(r.name for r in run_dirs)}")
