"""`comp predict`: runs' checkpoints → a submission CSV with its class probabilities.

A k-fold run contributes the mean of its folds' probabilities; several runs contribute equally. Each run
is rebuilt from its own config.yaml (model, head, image size), so no flags describe the model.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from . import metrics, runs
from .config import Config, read_run_config
from .data.reader import load_truth
from .data.tta import TTA_VIEWS
from .errors import CompError
from .fileio import refuse_overwrite
from .inference import make_accelerator, predict_views
from .models import normalizer
from .submission import TWINS, Provenance, Twin, common_images, score, write_submission


@dataclass
class PredictResult:
    csv: Path
    n: int
    seconds: float
    images_per_s: float
    prov: Provenance
    scores: dict | None  # public / private F1 when the data root has an answer key


def _accelerator(cfgs: list[Config]) -> Accelerator:
    return make_accelerator(cfgs[0].train.mixed_precision)


def run_views(run: Path, cfg: Config, paths: list[str], tta: str, ckpt: str, accelerator: Accelerator,
              folds: list[int] | None = None, labels=None) -> np.ndarray:
    """(V, N, 18) probabilities of `paths`, averaged over the run's folds (or the given ones)."""
    loader = accelerator.prepare_data_loader(runs.image_loader(cfg, paths, labels, desc=f"caching images for {run.name}"))
    total = None
    folds = runs.trained_folds(run) if folds is None else folds
    for k in folds:
        model, head, _ = runs.load_run(run, k, ckpt)
        # what this checkpoint was trained with (its metadata), or the run's augment.mean/std
        normalize = normalizer(cfg, model, cfg.model.channels_last).to(accelerator.device)
        model = model.to(accelerator.device)
        if cfg.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        views, index = predict_views(model, head, loader, normalize, accelerator, tta, desc=f"{run.name} fold {k}")
        views = views[:, np.argsort(index)]
        total = views if total is None else total + views
    return total / len(folds)


def predict(run_dirs: list[Path | str], out: Path | str, data: Path | str | None = None, tta: str | None = None,
            ckpt: str = "best", force: bool = False) -> PredictResult:
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise CompError("give at least one run folder")
    out = Path(out)
    refuse_overwrite(out, force, "submission")
    cfgs = [read_run_config(r) for r in run_dirs]
    for r in run_dirs:
        runs.trained_folds(r)  # fail before any work when a run is unfinished
    tta = tta or cfgs[0].predict.tta
    TTA_VIEWS.check(tta, "--tta")
    root = Path(data) if data else Path(cfgs[0].data.root)
    # every info.csv image must exist before any work; a run with data.crop reads the cropped copy
    evals = [runs.eval_frame(c, root) for c in cfgs]
    ev = evals[0]
    accelerator = _accelerator(cfgs)
    t0 = time.time()
    probs = combine_runs([run_views(r, c, e["path"].tolist(), tta, ckpt, accelerator).mean(0)
                          for r, c, e in zip(run_dirs, cfgs, evals, strict=True)])
    seconds = time.time() - t0
    n_models = sum(len(runs.trained_folds(r)) for r in run_dirs)
    prov = Provenance(
        kind="predict", data=str(root), runs=[str(r) for r in run_dirs], ckpt=ckpt, tta=tta,
        checkpoints=[str(runs.checkpoint(r, k, ckpt)) for r in run_dirs for k in runs.trained_folds(r)],
        stats={"image_size": {str(r): c.data.size for r, c in zip(run_dirs, cfgs, strict=True)},
               "models": {str(r): f"{c.model.name} ({c.model.head})" for r, c in zip(run_dirs, cfgs, strict=True)},
               "images": len(ev), "forward_passes": len(ev) * n_models * len(TTA_VIEWS[tta]),
               "seconds": round(seconds, 2), "images_per_s": round(len(ev) / max(seconds, 1e-9), 1)})
    ans = probs.argmax(1)
    if accelerator.is_main_process:
        write_submission(out, ev["ImageID"], ans, probs, prov, force=force)
    truth = load_truth(root)
    scores = None
    if truth is not None:
        scores = score(ev["ImageID"], ans, truth)
    return PredictResult(out, len(ev), seconds, len(ev) / max(seconds, 1e-9), prov, scores)


def combine_runs(per_run: list[np.ndarray]) -> np.ndarray:
    """Several runs' probabilities as one prediction: their mean (each run already averages its folds and
    TTA views). Eval predictions and their labelled twin both go through it."""
    return np.mean(np.stack(per_run), axis=0)


@TWINS.register("predict")
def predict_twin(prov: Provenance, with_probs: bool, depth: int = 0) -> Twin | None:
    """What the runs of a `comp predict` CSV predicted on the images they held out (best checkpoints; the
    validation files hold no TTA, so a CSV with TTA is taken as reliable as its models without it)."""
    if not prov.runs or prov.ckpt != "best":
        return None  # the last checkpoint has no held-out predictions of its own
    try:
        vals = [runs.read_validation(Path(r)) for r in prov.runs]
    except CompError:
        return None
    common = common_images([v["image"].to_numpy() for v in vals])  # images every run held out
    if not len(common):
        return None
    held = [v.set_index("image").loc[common] for v in vals]
    probs = combine_runs([runs.oof_probs(h).astype(float) for h in held])
    return Twin(probs if with_probs else None, probs.argmax(1), held[0]["label"].to_numpy(), common,
                f"{len(common)} held-out images of {', '.join(Path(r).name for r in prov.runs)}")


@dataclass
class Validation:
    run: Path
    folds: list[int]
    images: int
    plain: dict  # metrics.summarize without TTA
    tta: dict  # with TTA
    tta_name: str


def validate(run_dirs: list[Path | str], tta: str | None = None, ckpt: str = "best") -> list[Validation]:
    """Each run's validation fold(s), predicted without and with TTA: what TTA buys, per head."""
    out = []
    cfgs = [read_run_config(r) for r in run_dirs]
    accelerator = _accelerator(cfgs)
    for run, cfg in zip(map(Path, run_dirs), cfgs, strict=True):
        df = runs.train_frame(cfg)
        t = tta or cfg.predict.tta
        TTA_VIEWS.check(t, "--tta")
        ys, plain, mean = [], [], []
        folds = runs.trained_folds(run)
        runs.require_held_out(run, "--validate")
        for k in folds:
            val = df[df["fold"] == k]
            views = run_views(run, cfg, val["path"].tolist(), t, ckpt, accelerator, folds=[k])
            ys.append(val["label"].to_numpy())
            plain.append(views[0].argmax(1))
            mean.append(views.mean(0).argmax(1))
        y = np.concatenate(ys)
        out.append(Validation(run, folds, len(y), metrics.summarize(y, np.concatenate(plain)),
                              metrics.summarize(y, np.concatenate(mean)), t))
    return out
