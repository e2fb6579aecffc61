"""A run folder, and how to rebuild what it holds.

    runs/NAME/config.yaml                 the resolved pipeline (rebuilds data, model and head)
    runs/NAME/run.json                    folds trained, their best scores, OOF score
    runs/NAME/oof.parquet                 with every fold: one row per train image, 18 OOF probabilities
    runs/NAME/validation.parquet          the same for the folds trained so far
    runs/NAME/fold{k}/best.safetensors    weights of the best validation macro F1 (EMA weights with EMA)
    runs/NAME/fold{k}/last.safetensors    weights after the last epoch
    runs/NAME/fold{k}/checkpoint.json     names the committed state folder (written last: the commit)
    runs/NAME/fold{k}/state-NNNN/         the state after epoch NNNN, whole: Accelerate's (model, optimizer,
                                          schedule, EMA, loop counters, RNG) and the epoch's files below
    runs/NAME/fold{k}/metrics.csv         one row per epoch
    runs/NAME/fold{k}/val_probs.npy       validation probabilities of the best epoch (+ val_index.npy)
    runs/NAME/fold{k}/confusion.csv/.png  confusion matrix of the best epoch on the validation fold
    runs/NAME/fold{k}/done                written when the fold finished (best epoch and its scores)
    runs/NAME/full/                       instead of fold{k}/: one model trained on every person (`--folds full`),
                                          the same files without validation ones; best = last epoch

Every writer and reader of these files is here: the engine and soups write through it; predict,
ensemble, estimate and report read through it. Each file is written atomically, and an epoch's checkpoint
as a whole: its state folder is complete before `checkpoint.json` names it, and only then are best/last
weights, metrics and validation files published beside it (hard links), so a kill at any instant resumes
from the old epoch or the new one, never a mix.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import metrics
from .config import Config, read_run_config, save_config
from .data import labels as L
from .data.cache import build_store
from .data.loader import ImageDataset, make_loader
from .data.reader import load_eval, load_train
from .data.splits import assign_folds
from .errors import CompError
from .fileio import atomic_path, atomic_write, sweep_stale, temp_name
from .models import Head, create_model, load_weights_file
from .weights import norm_metadata

CHECKPOINTS = ("best", "last")
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "val_loss", "f1", "f1_mask", "f1_gender", "f1_age", "acc",
                  "seconds", "images_per_s", "data_wait"]
GPU_METRIC_COLUMNS = ["gpu_peak_gib"]  # peak memory allocated during the epoch (torch.cuda.max_memory_allocated)


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


# The "fold" of a model trained on every train person (`comp train --folds full`), the usual last step
# before a final submission: nobody is held out, so it trains exactly train.epochs and keeps the last epoch.
FULL = -1


def parse_folds(spec: str, n_folds: int, full: str | None = None) -> list[int]:
    """`--folds` of `comp train` and `comp sweep`: "all" | "full" | "K,K,..." → sorted fold numbers ([FULL] for
    "full"). `full`: when given, "full" is refused with that reason (a sweep scores held-out people)."""
    if spec == "all":
        return list(range(n_folds))
    if spec == "full":
        if full is not None:
            raise CompError(f"--folds full: {full}")
        return [FULL]
    try:
        folds = sorted({int(k) for k in spec.split(",")})
    except ValueError:
        raise CompError(f"--folds {spec!r}: expected all{'' if full else ', full'} or a list like 0,2") from None
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad:
        raise CompError(f"--folds {spec}: fold {bad[0]} does not exist; data.folds={n_folds} gives 0..{n_folds - 1}")
    return folds


def fold_name(fold: int) -> str:
    return "full" if fold == FULL else str(fold)


def fold_dir(run: Path | str, fold: int) -> Path:
    return Path(run) / ("full" if fold == FULL else f"fold{fold}")


def trained_folds(run: Path | str) -> list[int]:
    """Folds of a run that have finished (hold a `done` marker), in order; [FULL] for a full-data run."""
    run = Path(run)
    folds = sorted(int(p.name[4:]) for p in run.glob("fold*") if p.name[4:].isdigit() and (p / "done").exists())
    if (fold_dir(run, FULL) / "done").exists():
        folds = [FULL] + folds
    if not folds:
        raise CompError(f"{run}: no finished fold (fold*/done); train it with `comp train` or `--resume` it")
    return folds


def is_full(run: Path | str) -> bool:
    """A run trained on every person (`--folds full`): it holds nobody out."""
    return (fold_dir(run, FULL) / "done").exists()


def require_held_out(run: Path | str, what: str) -> None:
    """Refuses a full-data run where `what` needs held-out people, pointing to the k-fold run it refits."""
    if is_full(run):
        raise CompError(f"{run}: trained on every person (--folds full), so nobody is held out for {what}; "
                        "use the k-fold run it refits for that")


def checkpoint(run: Path | str, fold: int, which: str = "best") -> Path:
    if which not in CHECKPOINTS:
        raise CompError(f"--ckpt {which}: choose best or last")
    p = fold_dir(run, fold) / f"{which}.safetensors"
    if not p.is_file():
        raise CompError(f"{p}: checkpoint missing; was fold {fold_name(fold)} of {run} trained to the end?")
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


def read_oof(run: Path | str) -> pd.DataFrame:
    p = Path(run) / "oof.parquet"
    if not p.is_file():
        require_held_out(run, "out-of-fold predictions")
        raise CompError(f"{p}: no out-of-fold predictions; train every fold with `comp train --folds all`")
    return pd.read_parquet(p)


def read_validation(run: Path | str) -> pd.DataFrame:
    """Labelled held-out predictions of the folds trained so far (all of oof.parquet when complete)."""
    p = Path(run) / "validation.parquet"
    if not p.is_file():
        require_held_out(run, "validation predictions")
        raise CompError(f"{p}: no validation predictions; was {run} trained to the end of a fold?")
    return pd.read_parquet(p)


def oof_probs(oof: pd.DataFrame) -> np.ndarray:
    return oof[[f"p{c}" for c in range(L.N_CLASSES)]].to_numpy(np.float32)


# ------------------------------------------------------------------------------------------- writers
def prepare_run(cfg: Config, out: Path, resume: bool, force: bool) -> None:
    """Refuses to clobber a run; with --resume, the saved config must be the one asked for."""
    if (out / "config.yaml").exists():
        if resume:
            saved = read_run_config(out).flat()
            diff = sorted(k for k, v in cfg.flat().items() if saved.get(k) != v)
            if diff:
                raise CompError(f"{out}: --resume with a different config ({', '.join(diff[:5])}); resume with the "
                                "same pipeline and --set, or train into a new --out")
        elif force:
            shutil.rmtree(out)
        else:
            raise CompError(f"{out}: a run already exists here; --resume it, --force to start over, or pick --out")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """A checkpoint, with the input normalisation the model was fed in its metadata (what predict reads back)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata=norm_metadata(model))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def save_fold_validation(fold: Path, probs: np.ndarray, index: np.ndarray) -> None:
    """The best epoch's validation probabilities, rows in train-frame order, and their train-frame rows."""
    order = np.argsort(index)
    _save_npy(fold / "val_probs.npy", probs[order])
    _save_npy(fold / "val_index.npy", index[order])


def read_fold_validation(fold: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, 18), train-frame rows (n,)) of a fold's best epoch."""
    return np.load(fold / "val_probs.npy"), np.load(fold / "val_index.npy")


def write_metrics(fold: Path, history: list[dict]) -> None:
    with atomic_write(fold / "metrics.csv", newline="") as fh:
        gpu = [c for c in GPU_METRIC_COLUMNS if any(c in h for h in history)]  # only runs on a GPU have them
        w = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS + gpu, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)


def read_metrics(fold: Path) -> pd.DataFrame:
    return pd.read_csv(fold / "metrics.csv")


def write_confusion(fold: Path, y: np.ndarray, pred: np.ndarray) -> None:
    from .plots import save_confusion

    cm = metrics.confusion(y, pred)
    with atomic_write(fold / "confusion.csv", newline="") as fh:
        csv.writer(fh).writerows([[""] + list(range(L.N_CLASSES))] + [[i, *row] for i, row in enumerate(cm)])
    save_confusion(cm, fold / "confusion.png", title=f"{fold.name}: best epoch, validation")


def mark_done(fold: Path, best_epoch: int, best: dict) -> None:
    with atomic_write(fold / "done") as fh:
        json.dump({"best_epoch": best_epoch, "best": best}, fh)


def read_done(fold: Path) -> dict:
    """{'best_epoch': k, 'best': scores of that epoch} of a finished fold."""
    return json.loads((fold / "done").read_text())


# ---------------------------------------------------------------------------------- checkpoints
CHECKPOINT = "checkpoint.json"
EPOCH_FILES = ("best.safetensors", "val_probs.npy", "val_index.npy", "last.safetensors", "metrics.csv")
BEST_FILES = EPOCH_FILES[:3]  # carried over from the previous state when an epoch is not the best


def committed_state(fold: Path) -> Path | None:
    """The state folder of the last committed epoch (None: nothing to resume)."""
    p = fold / CHECKPOINT
    if p.is_file():
        try:
            d = fold / json.loads(p.read_text())["state"]
        except (ValueError, KeyError, TypeError):
            raise CompError(f"{p}: unreadable; delete {fold} and train the fold again") from None
        if not d.is_dir():
            raise CompError(f"{p}: names {d.name}, which is missing; delete {fold} and train the fold again")
        return d
    return fold / "state" if (fold / "state").is_dir() else None  # a run of comp before atomic checkpoints


def _link(src: Path, dst: Path) -> None:
    """dst becomes src's content, atomically: a hard link where the file system has them, else a copy."""
    if dst.exists() and os.path.samefile(src, dst):  # already linked; rename(2) onto the same file is a no-op
        return
    sweep_stale(dst)
    tmp = temp_name(dst)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (some network file systems): a copy, then the rename
        with atomic_path(dst) as t:
            shutil.copyfile(src, t)
        return
    os.replace(tmp, dst)


def publish(fold: Path, state: Path) -> None:
    """The committed epoch's files, beside its state folder where predict, report and soups read them."""
    for name in EPOCH_FILES:
        if (state / name).is_file():
            _link(state / name, fold / name)


def prune_states(fold: Path, keep: Path | None) -> None:
    """Removes state folders that are not the committed one (older epochs, or an epoch killed mid-save)."""
    for d in fold.glob("state-*"):
        if d != keep and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
    sweep_stale(fold / CHECKPOINT)


def save_checkpoint(accelerator, fold: Path, epoch: int, weights: torch.nn.Module, history: list[dict],
                    best: bool, validation: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Commits epoch `epoch` as a whole. Called by every process (Accelerate saves each one's RNG state).
    `weights`: the validated model; `best`: this epoch is the best so far (always, for a full-data fold);
    `validation`: its (probabilities, train-frame rows) on the held-out images, when it is the best."""
    state = fold / f"state-{epoch:04d}"
    if accelerator.is_main_process and state.exists():  # left by a save killed before its commit
        shutil.rmtree(state)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(state))
    if accelerator.is_main_process:
        save_weights(weights, state / "last.safetensors")
        write_metrics(state, history)
        if best:
            save_weights(weights, state / "best.safetensors")
            if validation is not None:
                save_fold_validation(state, *validation)
        else:
            previous = committed_state(fold)
            for name in BEST_FILES:
                _link(previous / name, state / name)
        with atomic_write(fold / CHECKPOINT) as fh:  # the commit
            json.dump({"state": state.name, "epoch": epoch}, fh)
        publish(fold, state)
        prune_states(fold, state)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, fold: Path) -> bool:
    """Restores the committed epoch (Accelerate state and loop counters) and republishes its files; False
    when the fold has no committed epoch yet."""
    state = committed_state(fold)
    if accelerator.is_main_process:
        prune_states(fold, state)
        if state is not None:
            publish(fold, state)
    accelerator.wait_for_everyone()
    if state is None:
        return False
    accelerator.load_state(str(state))
    return True


def write_held_out(run: Path, df: pd.DataFrame, folds: list[int]) -> dict | None:
    """validation.parquet: each validated train image (of the trained folds) with its label and 18
    probabilities from the fold that held it out; oof.parquet, the same, once every fold is trained.
    Returns the OOF scores when complete. A full-data run has neither."""
    folds = [k for k in folds if k != FULL]
    if not folds:
        return None
    probs = np.full((len(df), L.N_CLASSES), np.nan, np.float32)
    for k in folds:
        p, index = read_fold_validation(fold_dir(run, k))
        probs[index] = p
    oof = pd.DataFrame({"image": df["image"], "person": df["person"], "fold": df["fold"], "label": df["label"]})
    oof = pd.concat([oof, pd.DataFrame(probs, columns=[f"p{c}" for c in range(L.N_CLASSES)])], axis=1)
    done = ~np.isnan(probs).any(1)
    targets = [("validation.parquet", oof[done])] + ([("oof.parquet", oof)] if done.all() else [])
    for name, frame in targets:
        with atomic_path(run / name) as tmp:
            frame.to_parquet(tmp, index=False)
    return metrics.summarize(df["label"].to_numpy(), probs.argmax(1)) if done.all() else None


def write_run_info(run: Path, info: dict) -> None:
    with atomic_write(run / "run.json") as fh:
        json.dump(info, fh, indent=1, default=float)
