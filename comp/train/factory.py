"""What one fold's training is made of, built from the config by name: the model (timm), optimizer and LR
schedule (timm's factories), loss, Mixup/CutMix (timm), EMA (timm), loaders. `check_config` resolves
every name a pipeline gives (model, head, losses, augmentation, schedule, optimizer, TTA, detector,
weights, trackers) before a run folder is written, so a typo costs one line, not a half-made run.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import timm.optim
import torch
from accelerate import Accelerator
from accelerate.utils import PrecisionType
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from .. import runs
from ..config import Config, SchedConfig
from ..data import labels as L
from ..data.augment import PRESETS, build_augment
from ..data.cache import CACHE_MODES, build_store
from ..data.detectors import DETECTORS
from ..data.loader import SAMPLERS, EpochSampler, ImageDataset, Normalizer, make_loader, sampler_weights
from ..data.tta import TTA_VIEWS
from ..errors import CompError
from ..inference import make_accelerator
from ..models import HEADS, Head, check_freeze, check_model_name, create_model, freeze, normalizer
from ..registry import Registry
from ..weights import check_weights
from .losses import CLASS_WEIGHTS, LOSSES, Criterion
from .targets import Targets, create_mixup, target_table

# name → arguments of timm's create_scheduler_v2; every schedule starts with sched.warmup_epochs of warm-up
SCHEDULES = Registry("LR schedule", "sched.name")
SCHEDULES.register("cosine", {"sched": "cosine"})  # down to sched.min_lr at the last update
SCHEDULES.register("step", {"sched": "step"})  # × sched.decay_rate every sched.decay_epochs
SCHEDULES.register("constant", {"sched": "constant"})  # optim.lr after the warm-up

# tracker name → the module it needs (Accelerate's names)
TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim",
                   "comet_ml": "comet_ml", "clearml": "clearml", "dvclive": "dvclive"}


def trackers(names: list[str]) -> list[str]:
    """The trackers to log to: tensorboard when installed (skipped quietly otherwise); any other must be."""
    out = []
    for name in names:
        module = TRACKER_MODULES.get(name, name)
        if importlib.util.find_spec(module) is None:
            if name == "tensorboard":
                continue
            raise CompError(f"train.trackers names {name!r} but it is not installed; pip install {module} or remove it")
        out.append(name)
    return out


def check_config(cfg: Config, source: str = "config") -> None:
    """Every name in the config resolved against its registry or library; all problems in one CompError."""
    problems: list[str] = []

    def attempt(check, *args) -> None:
        try:
            check(*args)
        except CompError as e:
            problems.extend(f"{source}: {line}" for line in e.lines)

    def choice(key: str, value: str, options) -> None:
        if value not in options:
            raise CompError(f"{key}={value!r}; choose one of {', '.join(options)}")

    attempt(check_model_name, cfg.model.name)
    if timm.is_model(cfg.model.name):
        attempt(check_freeze, cfg.model)
    attempt(HEADS.check, cfg.model.head)
    for term in cfg.loss.terms:
        attempt(LOSSES.check, term)
    attempt(CLASS_WEIGHTS.check, cfg.loss.class_weights)
    if cfg.augment.ops is None:
        attempt(PRESETS.check, cfg.augment.preset)
    else:
        attempt(build_augment, cfg.augment.preset, cfg.augment.ops)  # builds each op: bad names and arguments
    attempt(SCHEDULES.check, cfg.sched.name)
    attempt(TTA_VIEWS.check, cfg.predict.tta)
    attempt(choice, "optim.name", cfg.optim.name, timm.optim.list_optimizers())
    attempt(choice, "data.cache", cfg.data.cache, CACHE_MODES)
    attempt(choice, "data.sampler", cfg.data.sampler, SAMPLERS)
    attempt(choice, "train.mixed_precision", cfg.train.mixed_precision,
            ["auto"] + [p for p in PrecisionType.list() if p != "fp8"])
    if cfg.data.crop:
        attempt(DETECTORS.check, cfg.data.crop.partition(":")[0], "data.crop")
    attempt(check_weights, cfg.model.weights)  # none | hub | a file | an installed package:NAME
    attempt(trackers, cfg.train.trackers)
    if problems:
        raise CompError(*problems)


def create_scheduler(optimizer: torch.optim.Optimizer, sc: SchedConfig, epochs: int, updates_per_epoch: int):
    """timm's scheduler, stepped once per optimizer update: warm-up, then the named schedule over the rest."""
    warmup = min(sc.warmup_epochs, epochs)
    scheduler, _ = create_scheduler_v2(
        optimizer, **SCHEDULES.resolve(sc.name), num_epochs=max(epochs - warmup, 1e-9), warmup_epochs=warmup,
        warmup_prefix=True, warmup_lr=sc.warmup_lr, min_lr=sc.min_lr, decay_epochs=sc.decay_epochs,
        decay_rate=sc.decay_rate, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return scheduler


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


def create_loaders(cfg: Config, df: pd.DataFrame, fold: int):
    """Train loader (augmented, drawn afresh each epoch by its sampler) and validation loader of one fold,
    with the train-frame rows of each. The full-data fold trains on every image and has no validation loader."""
    c = cfg.data
    # One cache over every train image: all folds (and later runs at this size) share it.
    store = build_store(df["path"].tolist(), tuple(c.size), c.cache, c.cache_dir, c.workers, "caching train images")
    labels = df["label"].to_numpy()
    in_val = df["fold"].to_numpy() == fold  # none for the full-data fold
    tr_idx, va_idx = np.flatnonzero(~in_val), np.flatnonzero(in_val)
    if len(tr_idx) < 2 or (len(va_idx) < 1 and fold != runs.FULL):
        raise CompError(f"fold {runs.fold_name(fold)}: {len(tr_idx)} train and {len(va_idx)} validation images; "
                        "need more people")
    weights = sampler_weights(labels[tr_idx], L.N_CLASSES) if c.sampler == "weighted" else None
    sampler = EpochSampler(len(tr_idx), cfg.train.seed, weights)
    train_ds = _Subset(ImageDataset(store, labels, build_augment(cfg.augment.preset, cfg.augment.ops)), tr_idx)
    batch = min(cfg.train.batch_size, len(tr_idx) - len(tr_idx) % 2)  # Mixup needs an even batch
    train_loader = make_loader(train_ds, batch, c.workers, sampler=sampler, drop_last=True)
    val_loader = (make_loader(_Subset(ImageDataset(store, labels), va_idx), cfg.predict.batch_size, c.workers)
                  if len(va_idx) else None)
    return train_loader, val_loader, tr_idx, va_idx


def create_targets(cfg: Config, df: pd.DataFrame, tr_idx: np.ndarray) -> Targets:
    table = target_table(df["label"].to_numpy()[tr_idx], df["age"].to_numpy()[tr_idx], runs.bins_of(cfg),
                         cfg.loss.age_sigma)
    # Mixup mixes batch positions: no batch is larger than train.batch_size
    return Targets(table, cfg.loss.label_smoothing, create_mixup(cfg.mixup, cfg.train.batch_size))


@dataclass
class TrainState:
    """Loop counters saved with the Accelerate state, so --resume continues where the run stopped."""
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer updates made
    best_f1: float = -1.0
    best_epoch: int = -1
    history: list[dict] = field(default_factory=list)  # one metrics row per finished epoch

    def state_dict(self) -> dict:
        import json

        return {"json": json.dumps(self.__dict__)}

    def load_state_dict(self, sd: dict) -> None:
        import json

        self.__dict__.update(json.loads(sd["json"]))

    def record(self, row: dict) -> bool:
        """Adds a finished epoch's row; True when its validation macro F1 is the best so far, and always
        without validation (the full-data fold: its model is the last epoch's)."""
        self.history.append(row)
        self.epoch = row["epoch"]
        if "f1" not in row:
            self.best_epoch = row["epoch"]
            return True
        if row["f1"] > self.best_f1:
            self.best_f1, self.best_epoch = row["f1"], row["epoch"]
            return True
        return False


@dataclass
class Fold:
    """One fold's training, ready to run: what the loop reads and updates."""
    cfg: Config
    fold: int
    out: Path
    accelerator: Accelerator
    model: torch.nn.Module
    head: Head
    optimizer: torch.optim.Optimizer
    scheduler: object
    criterion: Criterion
    targets: Targets  # a batch's soft targets (Mixup/CutMix, label smoothing, softened ages)
    ema: ModelEmaV3 | None
    normalize: Normalizer
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None  # None for the full-data fold
    val_rows: np.ndarray  # train-frame rows of the validation images
    y_val: torch.Tensor  # their labels
    state: TrainState
    frozen: list[torch.nn.Module]  # model.freeze's layers: kept in eval mode while the rest trains

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validated and saved: the EMA when on."""
        return self.ema.module if self.ema is not None else self.model


def unwrap(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under Accelerate's and torch.compile's wrappers: what EMA averages and checkpoints hold."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def build_fold(cfg: Config, df: pd.DataFrame, fold: int, out: Path, log_with: list[str]) -> Fold:
    tc = cfg.train
    accelerator = make_accelerator(tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum,
                                   log_with=log_with or None, project_dir=str(out))
    from accelerate.utils import set_seed

    set_seed(tc.seed + (cfg.data.folds if fold == runs.FULL else fold))  # fold k: seed + k; full: after the last
    train_loader, val_loader, tr_idx, va_idx = create_loaders(cfg, df, fold)
    head = Head(cfg.model.head, cfg.model.head_weights)
    model = create_model(cfg.model, head)
    # augment.mean/std, else what the weights expect; recorded on the model (and the EMA copy made from it)
    # so every checkpoint carries it
    normalize = normalizer(cfg, model, cfg.model.channels_last).to(accelerator.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # both on the plain module (torch.compile's wrapper renames every layer); the optimizer takes only what trains
    frozen = freeze(model, cfg.model.freeze)
    optimizer = timm.optim.create_optimizer_v2(
        model, opt=cfg.optim.name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, momentum=cfg.optim.momentum,
        layer_decay=cfg.optim.layer_decay if cfg.optim.layer_decay < 1 else None)
    if tc.compile:
        model = torch.compile(model)
    if val_loader is None:  # the full-data fold
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    else:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    updates_per_epoch = max(1, math.ceil(len(train_loader) / tc.grad_accum))
    scheduler = create_scheduler(optimizer, cfg.sched, tc.epochs, updates_per_epoch)
    # warm-up: the decay ramps towards ema_decay, so short runs are not dominated by the random init
    ema = ModelEmaV3(unwrap(accelerator, model), decay=tc.ema_decay, use_warmup=True) if tc.ema else None
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state, *([ema] if ema else []))
    return Fold(cfg, fold, out, accelerator, model, head, optimizer, scheduler,
                Criterion(cfg.loss, head, df["label"].to_numpy()[tr_idx]),
                create_targets(cfg, df, tr_idx),
                ema, normalize, train_loader, val_loader, va_idx, torch.as_tensor(df["label"].to_numpy()[va_idx]), state, frozen)
