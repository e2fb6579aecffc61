"""The training loop: one fold at a time, with Accelerate doing devices, mixed precision, gradient
accumulation and distribution (`accelerate launch -m comp train ...` runs the same code on many GPUs).

Per epoch: train (Mixup/CutMix on soft targets), validate (EMA weights when on), log, keep the best
checkpoint by validation macro F1, save the Accelerate state for --resume. With every fold trained,
the validation probabilities of each fold's best epoch form the out-of-fold file. The full-data fold
(`--folds full`) trains on every person for exactly train.epochs, with nothing to validate on. What the loop is made
of comes from `factory`; every file it writes goes through `comp.runs`.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import metrics, runs, ui
from ..config import Config
from ..errors import CompError
from ..inference import predict_probs
from .factory import Fold, build_fold, check_config, trackers, unwrap


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best: dict
    history: list[dict]
    seconds: float


def sync_every(device: torch.device) -> int:
    """Steps between NaN checks of the loss: each one is a host-device sync, free on a CPU, a stall on a GPU."""
    return 1 if device.type == "cpu" else 50


def train_one_epoch(f: Fold, epoch: int, bar=None) -> tuple[float, float]:
    """One pass over the fold's train images. Returns the mean training loss (over all processes) and the
    share of the epoch spent waiting for the next batch (the loader's cost, when it cannot keep up)."""
    acc, m, state = f.accelerator, f.cfg.mixup, f.state
    f.train_loader.set_epoch(epoch)  # Accelerate passes it on to our sampler (which draws the order from it)
    if f.targets.mixup is not None:
        f.targets.mixup.mixup_enabled = not (m.off_epoch and epoch >= m.off_epoch)
    f.model.train()
    for m in f.frozen:
        m.eval()
    every = sync_every(acc.device)
    losses, unchecked = [], []
    task = bar.add_task(f"fold {f.fold} epoch {epoch + 1}/{f.cfg.train.epochs}", total=len(f.train_loader),
                        info="") if bar else None
    start = waiting_since = time.perf_counter()
    waited = 0.0
    for i, (x, _, rows) in enumerate(f.train_loader):
        waited += time.perf_counter() - waiting_since
        with acc.accumulate(f.model):
            x, target = f.targets(f.normalize(x), rows)
            with acc.autocast():
                loss = f.criterion(f.model(x), target)
            unchecked.append((state.step + 1, loss.detach()))
            if len(unchecked) >= every:
                _check_finite(f, epoch, unchecked)
            acc.backward(loss)
            if acc.sync_gradients and f.cfg.train.grad_clip > 0:
                acc.clip_grad_norm_(f.model.parameters(), f.cfg.train.grad_clip)
            f.optimizer.step()
            f.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                state.step += 1
                f.scheduler.step_update(state.step)
                if f.ema is not None:
                    f.ema.update(unwrap(acc, f.model), step=state.step)
        losses.append(loss.detach())
        if bar:
            bar.update(task, advance=1, **({"info": f"loss {losses[-1].item():.3f}"} if i % every == 0 else {}))
        waiting_since = time.perf_counter()
    _check_finite(f, epoch, unchecked)
    seconds = time.perf_counter() - start
    return acc.gather(torch.stack(losses).mean()).mean().item(), waited / max(seconds, 1e-9)


def _check_finite(f: Fold, epoch: int, unchecked: list[tuple[int, torch.Tensor]]) -> None:
    """Raises at the first non-finite loss among the steps not checked yet (one host sync for all of them)."""
    if not unchecked:
        return
    finite = torch.isfinite(torch.stack([loss for _, loss in unchecked]))
    if not bool(finite.all()):
        k = int((~finite).nonzero()[0])
        step, loss = unchecked[k]
        raise CompError(f"fold {f.fold}: loss became {loss.item()} at epoch {epoch + 1}, step {step}; "
                        "lower optim.lr, use bf16 instead of fp16, or check the data")
    unchecked.clear()


def validate(f: Fold) -> tuple[dict, np.ndarray, np.ndarray]:
    """Scores of the validated weights on the fold's held-out images: (metrics row, probabilities (n, 18),
    train-frame rows (n,)), rows in the order the loader gave them."""
    probs, idx = predict_probs(f.eval_model, f.head, f.val_loader, f.normalize, f.accelerator, desc="validating")
    y = f.y_val[idx].numpy()
    row = {"val_loss": float(-np.log(np.clip(probs[np.arange(len(idx)), y], 1e-7, None)).mean()),
           **metrics.summarize(y, probs.argmax(1))}
    return row, probs, f.val_rows[idx]


def save_epoch(f: Fold, probs: np.ndarray | None, rows: np.ndarray | None, improved: bool) -> None:
    """The finished epoch committed as a whole: state for --resume, last (and best) weights, metrics."""
    runs.save_checkpoint(f.accelerator, f.out, f.state.epoch, unwrap(f.accelerator, f.eval_model),
                         f.state.history, improved, (probs, rows) if improved and probs is not None else None)


EpochHook = Callable[[int, dict], None]  # (fold, the epoch's metrics row); may raise to stop the run


def train_fold(cfg: Config, df: pd.DataFrame, fold: int, out: Path, resume: bool = False,
               on_epoch: EpochHook | None = None) -> FoldResult:
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    log_with = trackers(cfg.train.trackers)
    f = build_fold(cfg, df, fold, out, log_with)
    acc, state = f.accelerator, f.state
    if resume and runs.load_checkpoint(acc, out):
        f.scheduler.step_update(state.step)
    if log_with:
        acc.init_trackers(cfg.name, config=cfg.flat() | {"fold": fold})
    say = ui.console.print if acc.is_main_process else (lambda *a, **k: None)
    bar = ui.make_progress() if acc.is_main_process else None
    cuda = acc.device.type == "cuda"
    full = fold == runs.FULL
    if full and cfg.train.early_stopping:
        say(f"full: nobody is held out, so all {cfg.train.epochs} epochs train (train.early_stopping does not apply)")
    for epoch in range(state.epoch, cfg.train.epochs):
        e0 = time.time()
        if cuda:
            torch.cuda.reset_peak_memory_stats(acc.device)
        with bar or contextlib.nullcontext():
            train_loss, data_wait = train_one_epoch(f, epoch, bar)
        train_seconds = time.time() - e0
        row, probs, rows = ({}, None, None) if full else validate(f)
        row = {"epoch": epoch + 1, "lr": f.optimizer.param_groups[0]["lr"], "train_loss": train_loss, **row,
               "seconds": time.time() - e0,
               "images_per_s": len(f.train_loader) * f.train_loader.total_batch_size / max(train_seconds, 1e-9),
               "data_wait": data_wait}
        if cuda:  # what a larger batch or input size has left to use
            row["gpu_peak_gib"] = torch.cuda.max_memory_allocated(acc.device) / 2 ** 30
        improved = state.record(row)
        acc.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        save_epoch(f, probs, rows, improved)
        if full:
            say(f"full epoch {epoch + 1}: loss {train_loss:.4f}", highlight=False)
        else:
            say(f"fold {fold} epoch {epoch + 1}: loss {train_loss:.4f} val_loss {row['val_loss']:.4f} f1 {row['f1']:.4f} "
                f"(mask {row['f1_mask']:.3f} gender {row['f1_gender']:.3f} age {row['f1_age']:.3f}) acc {row['acc']:.3f}"
                f"{' *' if improved else ''}", highlight=False)
        if on_epoch is not None:  # after the save: a sweep that prunes here leaves a resumable run
            on_epoch(fold, row)
        if cfg.train.early_stopping and not full and epoch + 1 - state.best_epoch >= cfg.train.early_stopping:
            say(f"fold {fold}: early stop, no better F1 for {cfg.train.early_stopping} epochs")
            break
    acc.end_training()
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    if acc.is_main_process:
        if not full:
            probs, rows = runs.read_fold_validation(out)
            runs.write_confusion(out, df["label"].to_numpy()[rows], probs.argmax(1))
        runs.mark_done(out, state.best_epoch, best)
    if torch.cuda.is_available():  # frees GPU memory for the next fold; on CPU it would only run the GC
        acc.free_memory()
    return FoldResult(fold, state.best_epoch, best, state.history, time.time() - t0)


@dataclass
class TrainResult:
    out: Path
    folds: list[FoldResult]
    oof: dict | None


def train(cfg: Config, out: Path | str, folds: list[int] | None = None, resume: bool = False,
          force: bool = False, on_epoch: EpochHook | None = None) -> TrainResult:
    """Trains the given folds (default: cfg.data.fold; [runs.FULL]: one model on every person) into run
    folder `out`; `on_epoch` sees each epoch's validation scores (a sweep's pruner raises from it)."""
    out = Path(out)
    folds = [cfg.data.fold] if folds is None else folds
    full = runs.FULL in folds
    if full and len(folds) > 1:
        raise CompError("--folds full trains one model on every person; train the k folds into another --out")
    bad = [k for k in folds if not 0 <= k < cfg.data.folds and k != runs.FULL]
    if bad:
        raise CompError(f"fold {bad[0]} does not exist: data.folds={cfg.data.folds} gives folds 0..{cfg.data.folds - 1}")
    if resume and (any(out.glob("fold[0-9]*")) if full else runs.fold_dir(out, runs.FULL).exists()):
        raise CompError(f"{out}: holds {'k-fold' if full else 'full-data'} models, and a run is one or the other; "
                        f"train {'--folds full' if full else 'these folds'} into another --out")
    check_config(cfg)
    df = runs.train_frame(cfg)  # reads and validates the data (and makes the crops) before the run exists
    fresh = force or not (out / "config.yaml").exists()
    runs.prepare_run(cfg, out, resume, force)
    results = []
    try:
        for k in folds:
            d = runs.fold_dir(out, k)
            if resume and (d / "done").exists():  # finished before the interruption
                done = runs.read_done(d)
                results.append(FoldResult(k, done["best_epoch"], done["best"], [], 0.0))
                continue
            results.append(train_fold(cfg, df, k, d, resume=resume, on_epoch=on_epoch))
    except BaseException:
        if fresh and not any(runs.committed_state(runs.fold_dir(out, k)) for k in folds):
            shutil.rmtree(out, ignore_errors=True)  # nothing worth resuming: the corrected rerun needs no --force
        raise
    trained = runs.trained_folds(out)
    oof = runs.write_held_out(out, df, trained)
    runs.write_run_info(out, {"name": cfg.name, "folds": ["full"] if full else trained,
                              "best": {runs.fold_name(r.fold): r.best for r in results},
                              "oof": oof, "images": len(df), "people": int(df["person"].nunique())})
    return TrainResult(out, results, oof)
