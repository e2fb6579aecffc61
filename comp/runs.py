"""A run folder, and how to rebuild what it holds.

    runs/NAME/config.yaml                 the resolved pipeline (rebuilds data, model and head)
    runs/NAME/run.json                    folds trained, their best scores, OOF score
    runs/NAME/oof.parquet                 with every fold: one row per train image, 18 OOF probabilities
    runs/NAME/validation.parquet          the same for the folds trained so far
    runs/NAME/fold{k}/best.safetensors    weights of the best validation macro F1 (EMA weights with EMA)
    runs/NAME/fold{k}/last.safetensors    weights after the last epoch
    runs/NAME/fold{k}/state/              Accelerate state for --resume
    runs/NAME/fold{k}/metrics.csv         one row per epoch
    runs/NAME/fold{k}/val_probs.npy       validation probabilities of the best epoch (+ val_index.npy)
    runs/NAME/fold{k}/done                written when the fold finished
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import Config, read_run_config
from .data import labels as L
from .data.cache import build_store
from .data.loader import ImageDataset, make_loader
from .data.reader import load_eval, load_train
from .data.splits import assign_folds
from .errors import CompError
from .train.models import Head, create_model, load_weights_file

CHECKPOINTS = ("best", "last")


def bins_of(cfg: Config) -> L.AgeBins:
    return L.AgeBins(cfg.data.young_below, cfg.data.old_from)


def data_root(cfg: Config, root: Path | str | None = None) -> Path:
    """The dataset root a run reads: `root` (default data.root), or its cropped copy when data.crop names a
    detector (made on first use, resumable), so train and predict crop the same way."""
    root = Path(root if root is not None else cfg.data.root)
    if cfg.data.crop:
        from .data.crop import cropped_root

        return cropped_root(root, cfg.data.crop, cfg.data.crop_margin, cfg.data.cache_dir)
    return root


def train_frame(cfg: Config) -> pd.DataFrame:
    """Train images with labels under the run's age bins and relabels, and their person-level fold."""
    df = load_train(data_root(cfg), bins_of(cfg), cfg.data.relabel)
    return assign_folds(df, cfg.data.folds, cfg.data.split_seed)


def eval_frame(cfg: Config, root: Path | str | None = None) -> pd.DataFrame:
    return load_eval(data_root(cfg, root))


def image_loader(cfg: Config, paths: list[str], labels=None, batch_size: int | None = None, desc: str = "caching"):
    """An in-order loader (no augmentation) over `paths` at the run's size, through the image cache."""
    store = build_store(paths, tuple(cfg.data.size), cfg.data.cache, cfg.data.cache_dir, cfg.data.workers, desc)
    return make_loader(ImageDataset(store, labels), batch_size or cfg.predict.batch_size, cfg.data.workers)


def fold_dir(run: Path | str, fold: int) -> Path:
    return Path(run) / f"fold{fold}"


def trained_folds(run: Path | str) -> list[int]:
    """Folds of a run that have finished (hold a `done` marker), in order."""
    run = Path(run)
    folds = sorted(int(p.name[4:]) for p in run.glob("fold*") if p.name[4:].isdigit() and (p / "done").exists())
    if not folds:
        raise CompError(f"{run}: no finished fold (fold*/done); train it with `comp train` or `--resume` it")
    return folds


def checkpoint(run: Path | str, fold: int, which: str = "best") -> Path:
    if which not in CHECKPOINTS:
        raise CompError(f"--ckpt {which}: choose best or last")
    p = fold_dir(run, fold) / f"{which}.safetensors"
    if not p.is_file():
        raise CompError(f"{p}: checkpoint missing; was fold {fold} of {run} trained to the end?")
    return p


def build_model(cfg: Config, weights: Path | str | None = None) -> tuple[torch.nn.Module, Head]:
    """The run's architecture and head; with `weights`, loaded from that file (all tensors must match)."""
    head = Head(cfg.model.head, cfg.model.head_weights)
    model_cfg = cfg.model
    if weights is not None:  # the checkpoint replaces whatever initial weights the pipeline named
        from dataclasses import replace

        model_cfg = replace(cfg.model, weights="none")
    model = create_model(model_cfg, head)
    if weights is not None:
        n, skipped = load_weights_file(model, weights)
        if skipped:
            raise CompError(f"{weights}: {len(skipped)} tensors do not fit {cfg.model.name} (e.g. {skipped[0]})")
    return model, head


def load_run(run: Path | str, fold: int, which: str = "best") -> tuple[torch.nn.Module, Head, Config]:
    cfg = read_run_config(run)
    model, head = build_model(cfg, checkpoint(run, fold, which))
    return model.eval(), head, cfg


def run_info(run: Path | str) -> dict:
    p = Path(run) / "run.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def read_oof(run: Path | str) -> pd.DataFrame:
    p = Path(run) / "oof.parquet"
    if not p.is_file():
        raise CompError(f"{p}: no out-of-fold predictions; train every fold with `comp train --folds all`")
    return pd.read_parquet(p)


def read_validation(run: Path | str) -> pd.DataFrame:
    """Labelled held-out predictions of the folds trained so far (all of oof.parquet when complete)."""
    p = Path(run) / "validation.parquet"
    if not p.is_file():
        raise CompError(f"{p}: no validation predictions; was {run} trained to the end of a fold?")
    return pd.read_parquet(p)


def oof_probs(oof: pd.DataFrame) -> np.ndarray:
    return oof[[f"p{c}" for c in range(L.N_CLASSES)]].to_numpy(np.float32)
