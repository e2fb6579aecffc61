"""The training loop: one fold at a time, with Accelerate doing devices, mixed precision, gradient
accumulation and distribution (`accelerate launch -m comp train ...` runs the same code on many GPUs).

Per epoch: train (Mixup/CutMix on soft targets), validate (EMA weights when on), log, keep the best
checkpoint by validation macro F1, save the Accelerate state for --resume. With every fold trained,
the validation probabilities of each fold's best epoch form the out-of-fold file.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from .. import metrics, runs, ui
from ..config import Config, save_config
from ..data import labels as L
from ..data.augment import build_augment
from ..data.cache import build_store
from ..data.loader import EpochSampler, ImageDataset, Normalizer, make_loader, sampler_weights
from ..errors import CompError
from ..fileio import atomic_path, atomic_write
from ..inference import predict_probs
from .losses import Criterion, soft_targets
from .models import Head, create_model

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "f1", "f1_mask", "f1_gender", "f1_age", "acc",
                  "seconds", "images_per_s"]


@dataclass
class TrainState:
    """Loop counters saved with the Accelerate state, so --resume continues where the run stopped."""
    epoch: int = 0
    step: int = 0
    best_f1: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)

    def state_dict(self) -> dict:
        return {"json": json.dumps(self.__dict__)}

    def load_state_dict(self, sd: dict) -> None:
        self.__dict__.update(json.loads(sd["json"]))


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    best: dict
    history: list[dict]
    seconds: float


def _trackers(names: list[str]) -> list[str]:
    """tensorboard when installed; any other tracker the config names must be installed."""
    import importlib.util

    out = []
    for name in names:
        module = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim",
                  "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive"}.get(name, name)
        if importlib.util.find_spec(module) is None:
            if name == "tensorboard":
                continue
            raise CompError(f"train.trackers names {name!r} but it is not installed; pip install {module} or remove it")
        out.append(name)
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


def save_weights(model: torch.nn.Module, path: Path) -> None:
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp))


def write_metrics(path: Path, history: list[dict]) -> None:
    with atomic_write(path, newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def _loader_pair(cfg: Config, df: pd.DataFrame, fold: int):
    """Train loader (augmented, drawn afresh each epoch by its sampler) and validation loader of one fold."""
    c = cfg.data
    # One cache over every train image: all folds (and later runs at this size) share it.
    store = build_store(df["path"].tolist(), tuple(c.size), c.cache, c.cache_dir, c.workers, "caching train images")
    labels = df["label"].to_numpy()
    in_val = df["fold"].to_numpy() == fold
    tr_idx, va_idx = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    if len(tr_idx) < 2 or len(va_idx) < 1:
        raise CompError(f"fold {fold}: {len(tr_idx)} train and {len(va_idx)} validation images; need more people")
    weights = sampler_weights(labels[tr_idx], L.N_CLASSES) if c.sampler == "weighted" else None
    sampler = EpochSampler(len(tr_idx), cfg.train.seed, weights)
    train_ds = _Subset(ImageDataset(store, labels, build_augment(cfg.augment.preset, cfg.augment.ops)), tr_idx)
    batch = min(cfg.train.batch_size, len(tr_idx) - len(tr_idx) % 2)  # Mixup needs an even batch
    train_loader = make_loader(train_ds, batch, c.workers, sampler=sampler, drop_last=True)
    val_loader = make_loader(_Subset(ImageDataset(store, labels), va_idx), cfg.predict.batch_size, c.workers)
    return train_loader, val_loader, tr_idx, va_idx


class _Subset(torch.utils.data.Dataset):
    """Rows `index` of a dataset; (i, seed) items from the sampler keep their seed. Yields local indices."""

    def __init__(self, ds: ImageDataset, index: np.ndarray):
        self.ds, self.index = ds, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        x, y, _ = self.ds[(int(self.index[i]), seed)]
        return x, y, i


def train_fold(cfg: Config, df: pd.DataFrame, fold: int, out: Path, resume: bool = False) -> FoldResult:
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    tc = cfg.train
    trackers = _trackers(tc.trackers)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum,
                              log_with=trackers or None, project_dir=str(out))
    set_seed(tc.seed + fold)
    train_loader, val_loader, tr_idx, va_idx = _loader_pair(cfg, df, fold)
    head = Head(cfg.model.head, cfg.model.head_weights)
    model = create_model(cfg.model, head)
    normalize = Normalizer(cfg.augment.mean, cfg.augment.std, cfg.model.channels_last)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, opt=cfg.optim.name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                    momentum=cfg.optim.momentum)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    normalize = normalize.to(accelerator.device)
    updates_per_epoch = max(1, math.ceil(len(train_loader) / tc.grad_accum))
    total_updates = tc.epochs * updates_per_epoch
    warmup = int(cfg.sched.warmup_epochs * updates_per_epoch) if cfg.sched.name == "cosine" else 0
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total_updates - warmup) if cfg.sched.name == "cosine"
                                  else 10**12, lr_min=cfg.sched.min_lr, warmup_t=warmup,
                                  warmup_lr_init=cfg.sched.warmup_lr, warmup_prefix=True, t_in_epochs=False)
    criterion = Criterion(cfg.loss, head, df["label"].to_numpy()[tr_idx])
    m = cfg.mixup
    mixup = Mixup(mixup_alpha=m.mixup_alpha, cutmix_alpha=m.cutmix_alpha, prob=m.prob, switch_prob=m.switch_prob,
                  label_smoothing=cfg.loss.label_smoothing, num_classes=L.N_CLASSES) \
        if (m.mixup_alpha > 0 or m.cutmix_alpha > 0) else None
    # warm-up: the decay ramps towards ema_decay, so short runs are not dominated by the random init
    ema = ModelEmaV3(accelerator.unwrap_model(model), decay=tc.ema_decay, use_warmup=True) if tc.ema else None
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state, *([ema] if ema else []))
    if resume and (out / "state").is_dir():
        accelerator.load_state(str(out / "state"))
        scheduler.step_update(state.step)
    if trackers:
        accelerator.init_trackers(cfg.name, config=_flat(cfg.to_dict()) | {"fold": fold})

    labels = torch.as_tensor(df["label"].to_numpy()[va_idx])
    eval_model = ema.module if ema else model
    bar = ui.make_progress() if accelerator.is_main_process else None
    for epoch in range(state.epoch, tc.epochs):
        e0 = time.time()
        train_loader.set_epoch(epoch)  # Accelerate passes it on to our sampler (which draws the order from it)
        if mixup is not None:
            mixup.mixup_enabled = not (m.off_epoch and epoch >= m.off_epoch)
        model.train()
        losses = []
        with bar or contextlib.nullcontext():
            task = bar.add_task(f"fold {fold} epoch {epoch + 1}/{tc.epochs}", total=len(train_loader), info="") if bar else None
            for x, y, _ in train_loader:
                with accelerator.accumulate(model):
                    x = normalize(x)
                    if mixup is not None and mixup.mixup_enabled:
                        x, target = mixup(x, y)
                    else:
                        target = soft_targets(y, cfg.loss.label_smoothing)
                    with accelerator.autocast():
                        loss = criterion(model(x), target)
                    if not torch.isfinite(loss):
                        raise CompError(f"fold {fold}: loss became {loss.item()} at epoch {epoch + 1}, step "
                                        f"{state.step + 1}; lower optim.lr, use bf16 instead of fp16, or check the data")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and tc.grad_clip > 0:
                        accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if accelerator.sync_gradients:
                        state.step += 1
                        scheduler.step_update(state.step)
                        if ema is not None:
                            ema.update(accelerator.unwrap_model(model), step=state.step)
                losses.append(loss.detach())
                if bar:
                    bar.update(task, advance=1, info=f"loss {losses[-1].item():.3f}")
        train_seconds = time.time() - e0
        train_loss = accelerator.gather(torch.stack(losses).mean()).mean().item()
        probs, idx = predict_probs(eval_model, head, val_loader, normalize, accelerator, desc="validating")
        y_val = labels[idx].numpy()
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
               "val_loss": float(-np.log(np.clip(probs[np.arange(len(idx)), y_val], 1e-7, None)).mean()),
               **metrics.summarize(y_val, probs.argmax(1)), "seconds": time.time() - e0,
               "images_per_s": len(train_loader) * train_loader.total_batch_size / max(train_seconds, 1e-9)}
        state.history.append(row)
        accelerator.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        improved = row["f1"] > state.best_f1
        if improved:
            state.best_f1, state.best_epoch = row["f1"], epoch + 1
        state.epoch = epoch + 1
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if improved:
                save_weights(accelerator.unwrap_model(eval_model), out / "best.safetensors")
                order = np.argsort(idx)
                with atomic_path(out / "val_probs.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, probs[order])
                with atomic_path(out / "val_index.npy") as tmp, open(tmp, "wb") as fh:
                    np.save(fh, va_idx[idx[order]])
            save_weights(accelerator.unwrap_model(eval_model), out / "last.safetensors")
            write_metrics(out / "metrics.csv", state.history)
        accelerator.save_state(str(out / "state"))
        if accelerator.is_main_process:
            ui.console.print(f"fold {fold} epoch {epoch + 1}: loss {train_loss:.4f} val_loss {row['val_loss']:.4f} "
                             f"f1 {row['f1']:.4f} (mask {row['f1_mask']:.3f} gender {row['f1_gender']:.3f} "
                             f"age {row['f1_age']:.3f}) acc {row['acc']:.3f}{' *' if improved else ''}", highlight=False)
        if tc.early_stopping and epoch + 1 - state.best_epoch >= tc.early_stopping:
            ui.console.print(f"fold {fold}: early stop, no better F1 for {tc.early_stopping} epochs")
            break
    accelerator.end_training()
    if accelerator.is_main_process:
        _write_fold_confusion(out, df)
    best = next((h for h in state.history if h["epoch"] == state.best_epoch), {})
    if accelerator.is_main_process:
        with atomic_write(out / "done") as fh:
            json.dump({"best_epoch": state.best_epoch, "best": best}, fh)
    accelerator.free_memory()
    return FoldResult(fold, state.best_epoch, best, state.history, time.time() - t0)


def _write_fold_confusion(out: Path, df: pd.DataFrame) -> None:
    from ..plots import save_confusion

    probs, index = np.load(out / "val_probs.npy"), np.load(out / "val_index.npy")
    y = df["label"].to_numpy()[index]
    cm = metrics.confusion(y, probs.argmax(1))
    with atomic_write(out / "confusion.csv", newline="") as fh:
        csv.writer(fh).writerows([[""] + list(range(L.N_CLASSES))] + [[i, *row] for i, row in enumerate(cm)])
    save_confusion(cm, out / "confusion.png", title=f"{out.name}: best epoch, validation")


def _write_oof(run: Path, df: pd.DataFrame, folds: list[int]) -> dict | None:
    """validation.parquet: each validated train image (of the trained folds) with its label and 18
    probabilities from the fold that held it out; oof.parquet, the same, once every fold is trained.
    Returns the OOF scores when complete."""
    probs = np.full((len(df), L.N_CLASSES), np.nan, np.float32)
    for k in folds:
        d = runs.fold_dir(run, k)
        probs[np.load(d / "val_index.npy")] = np.load(d / "val_probs.npy")
    oof = pd.DataFrame({"image": df["image"], "person": df["person"], "fold": df["fold"], "label": df["label"]})
    oof = pd.concat([oof, pd.DataFrame(probs, columns=[f"p{c}" for c in range(L.N_CLASSES)])], axis=1)
    done = ~np.isnan(probs).any(1)
    targets = [("validation.parquet", oof[done])] + ([("oof.parquet", oof)] if done.all() else [])
    for name, frame in targets:
        with atomic_path(run / name) as tmp:
            frame.to_parquet(tmp, index=False)
    return metrics.summarize(df["label"].to_numpy(), probs.argmax(1)) if done.all() else None


@dataclass
class TrainResult:
    out: Path
    folds: list[FoldResult]
    oof: dict | None


def prepare_run(cfg: Config, out: Path, resume: bool, force: bool) -> None:
    """Refuses to clobber a run; with --resume, the saved config must be the one asked for."""
    import shutil

    from ..config import read_run_config

    if (out / "config.yaml").exists():
        if resume:
            saved = read_run_config(out).to_dict()
            diff = sorted(k for k, v in _flat(cfg.to_dict()).items() if _flat(saved).get(k) != v)
            if diff:
                raise CompError(f"{out}: --resume with a different config ({', '.join(diff[:5])}); resume with the "
                                "same pipeline and --set, or train into a new --out")
        elif force:
            shutil.rmtree(out)
        else:
            raise CompError(f"{out}: a run already exists here; --resume it, --force to start over, or pick --out")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")


def train(cfg: Config, out: Path | str, folds: list[int] | None = None, resume: bool = False,
          force: bool = False) -> TrainResult:
    """Trains the given folds (default: cfg.data.fold) into run folder `out`."""
    out = Path(out)
    df = runs.train_frame(cfg)
    folds = [cfg.data.fold] if folds is None else folds
    bad = [k for k in folds if not 0 <= k < cfg.data.folds]
    if bad:
        raise CompError(f"fold {bad[0]} does not exist: data.folds={cfg.data.folds} gives folds 0..{cfg.data.folds - 1}")
    prepare_run(cfg, out, resume, force)
    results = []
    for k in folds:
        d = runs.fold_dir(out, k)
        if resume and (d / "done").exists():  # finished before the interruption
            done = json.loads((d / "done").read_text())
            results.append(FoldResult(k, done["best_epoch"], done["best"], [], 0.0))
            continue
        results.append(train_fold(cfg, df, k, d, resume=resume))
    trained = sorted({int(p.name[4:]) for p in out.glob("fold*") if (p / "done").exists()})
    oof = _write_oof(out, df, trained)
    info = {"name": cfg.name, "folds": trained, "best": {r.fold: r.best for r in results}, "oof": oof,
            "images": len(df), "people": int(df["person"].nunique())}
    with atomic_write(out / "run.json") as fh:
        json.dump(info, fh, indent=1, default=float)
    return TrainResult(out, results, oof)
