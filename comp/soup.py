"""`comp ensemble --soup`: average the weights of several checkpoints of one architecture into one model
(Wortsman et al., 2022, "Model soups").

- uniform soup: the mean of every ingredient.
- greedy soup: ingredients sorted by validation macro F1, each added only when the soup's validation
  macro F1 does not drop.

Soups work for checkpoints fine-tuned from the same starting weights (e.g. one pretrained model trained
with different seeds or recipes); models trained from different random inits do not average, and the
greedy soup then keeps just the best ingredient. All ingredients must share the validation fold, so that
their validation scores are comparable and unseen by every ingredient. The result is a run folder that
`comp predict` takes like any other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from . import metrics, runs
from .config import Config, read_run_config, save_config
from .errors import CompError
from .fileio import atomic_dir
from .inference import make_accelerator
from .models import normalizer, resolve_norm
from .weights import IMAGENET_MEAN, IMAGENET_STD, Norm, file_norm


@dataclass
class Ingredient:
    run: Path
    fold: int
    ckpt: Path
    cfg: Config
    f1: float = 0.0


def _ingredients(inputs: list[Path]) -> list[Ingredient]:
    out = []
    for p in inputs:
        if p.is_dir():
            runs.require_held_out(p, "a soup, which scores its ingredients on a held-out fold")
            out += [Ingredient(p, k, runs.checkpoint(p, k), read_run_config(p)) for k in runs.trained_folds(p)]
        elif p.suffix == ".safetensors" and p.parent.name.startswith("fold") and p.parent.name[4:].isdigit():
            out.append(Ingredient(p.parent.parent, int(p.parent.name[4:]), p, read_run_config(p.parent.parent)))
        else:
            raise CompError(f"{p}: not a run folder or a runs/NAME/foldK/*.safetensors checkpoint")
    if len(out) < 2:
        raise CompError("a soup needs at least two checkpoints")
    return out


def _check_compatible(ings: list[Ingredient], states: list[dict]) -> None:
    first = ings[0]
    for ing, sd in zip(ings[1:], states[1:], strict=True):
        if (ing.cfg.model.name, ing.cfg.model.head) != (first.cfg.model.name, first.cfg.model.head):
            raise CompError(f"{ing.ckpt}: {ing.cfg.model.name} ({ing.cfg.model.head}) cannot be averaged with "
                            f"{first.cfg.model.name} ({first.cfg.model.head}); a soup needs one architecture and head")
        if {k: v.shape for k, v in sd.items()} != {k: v.shape for k, v in states[0].items()}:
            raise CompError(f"{ing.ckpt}: its tensors differ from {first.ckpt}'s; a soup needs one architecture")
        if _norm_record(ing) != _norm_record(first):  # the weights live in different input spaces
            raise CompError(f"{ing.ckpt}: trained on inputs normalised as {_norm_record(ing)}, {first.ckpt} as "
                            f"{_norm_record(first)}; a soup needs one normalisation")
        d, d0 = ing.cfg.data, first.cfg.data
        if (ing.fold, d.root, d.folds, d.split_seed, d.old_from, d.young_below, d.relabel) != \
                (first.fold, d0.root, d0.folds, d0.split_seed, d0.old_from, d0.young_below, d0.relabel):
            raise CompError(f"{ing.ckpt}: validated on another fold or split than {first.ckpt}; soup checkpoints "
                            "trained with the same data settings and --fold")


def _norm_record(ing: Ingredient) -> tuple:
    """(mean, std) an ingredient was trained with: its config's, else its checkpoint's (checkpoints from
    before comp recorded it were fed ImageNet's)."""
    own = file_norm(ing.ckpt) or Norm(IMAGENET_MEAN, IMAGENET_STD, "ImageNet")
    n = resolve_norm(ing.cfg, own)
    return list(n.mean), list(n.std)


def average(states: list[dict]) -> dict:
    """Mean of floating-point tensors; integer buffers (BatchNorm's step counters) from the first."""
    out = {}
    for k, v in states[0].items():
        out[k] = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
    return out


@dataclass
class SoupResult:
    out: Path
    ingredients: list[Ingredient]
    uniform_f1: float
    greedy_f1: float
    greedy_members: list[int]
    kind: str


def make_soup(inputs: list[Path | str], out: Path | str, kind: str = "greedy", force: bool = False) -> SoupResult:
    if kind not in ("greedy", "uniform"):
        raise CompError(f"--soup-kind {kind}: choose greedy or uniform")
    ings = _ingredients([Path(p) for p in inputs])
    states = [load_file(str(i.ckpt)) for i in ings]
    _check_compatible(ings, states)
    cfg = ings[0].cfg
    df = runs.train_frame(cfg)
    val = df[df["fold"] == ings[0].fold]
    y = val["label"].to_numpy()
    accelerator = make_accelerator(cfg.train.mixed_precision)
    loader = accelerator.prepare_data_loader(runs.image_loader(cfg, val["path"].tolist(), y, desc="caching validation"))
    # built from the first checkpoint: the model carries the normalisation it recorded, so the soup's own
    # checkpoints record it too
    model, head = runs.build_model(cfg, ings[0].ckpt)
    norm = normalizer(cfg, model).to(accelerator.device)

    def val_probs(state: dict) -> np.ndarray:
        from .inference import predict_probs

        model.load_state_dict(state)
        model.to(accelerator.device)
        p, idx = predict_probs(model, head, loader, norm, accelerator, desc="validating")
        return p[np.argsort(idx)]

    for ing, sd in zip(ings, states, strict=True):
        ing.f1 = metrics.macro_f1(y, val_probs(sd).argmax(1))
    uniform = average(states)
    uniform_f1 = metrics.macro_f1(y, val_probs(uniform).argmax(1))
    order = sorted(range(len(ings)), key=lambda i: -ings[i].f1)
    members, best = [order[0]], ings[order[0]].f1
    for i in order[1:]:
        f = metrics.macro_f1(y, val_probs(average([states[j] for j in members + [i]])).argmax(1))
        if f >= best:
            members, best = members + [i], f
    final = uniform if kind == "uniform" else average([states[j] for j in members])
    probs = val_probs(final)
    final_f1 = metrics.macro_f1(y, probs.argmax(1))
    with atomic_dir(out, force=force) as tmp:
        save_config(cfg, tmp / "config.yaml")
        fold = runs.fold_dir(tmp, ings[0].fold)
        fold.mkdir()
        model.load_state_dict(final)
        for name in ("best", "last"):
            runs.save_weights(model, fold / f"{name}.safetensors")
        runs.save_fold_validation(fold, probs, np.flatnonzero(df["fold"].to_numpy() == ings[0].fold))
        row = {"epoch": 1, **metrics.summarize(y, probs.argmax(1))}
        runs.write_metrics(fold, [row])
        runs.mark_done(fold, 1, row)
        runs.write_run_info(tmp, {"name": Path(out).name, "soup": kind, "folds": [ings[0].fold], "f1": final_f1,
                                  "ingredients": [{"ckpt": str(i.ckpt), "val_f1": i.f1} for i in ings],
                                  "greedy_members": [str(ings[j].ckpt) for j in members]})
    return SoupResult(Path(out), ings, uniform_f1, best, members, kind)
