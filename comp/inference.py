"""Batched inference to 18-class probabilities, with test-time augmentation as a list of views, and the
precision training and inference run at.

Used by training (validation), predict, ensemble (soups) and explain, so every place gets the same
probabilities from the same checkpoint. The views of a batch go through the model as one batch: one
forward pass per batch whatever the TTA, which keeps a GPU busy.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from . import ui
from .data.tta import TTA_VIEWS
from .models import Head


@torch.no_grad()
def predict_views(model: torch.nn.Module, head: Head, loader, normalize: torch.nn.Module, accelerator=None,
                  tta: str = "none", desc: str = "predicting") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities per view (V, N, 18) float32, dataset indices (N,)) in the loader's order.

    The loader yields (uint8 images, labels, indices); with Accelerate, batches of all processes are
    gathered, duplicates from uneven splitting dropped."""
    model.eval()
    views = TTA_VIEWS.resolve(tta, "--tta")
    probs, index = [], []
    for x, _, i in ui.track(loader, desc, total=len(loader)):
        x = normalize(x)
        batch = torch.cat([v(x) for v in views]) if len(views) > 1 else x
        if x.is_contiguous(memory_format=torch.channels_last):
            batch = batch.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            p = head.probs(model(batch)).view(len(views), len(x), -1)
        if accelerator is not None:
            p, i = accelerator.gather_for_metrics((p.transpose(0, 1), i))
            p = p.transpose(0, 1)
        probs.append(p.float().cpu())
        index.append(i.cpu())
    if not probs:
        return np.zeros((len(views), 0, 18), np.float32), np.zeros(0, np.int64)
    return torch.cat(probs, 1).numpy().astype(np.float32), torch.cat(index).numpy().astype(np.int64)


def predict_probs(*args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Like predict_views, with the views averaged: (N, 18) probabilities and indices."""
    per_view, index = predict_views(*args, **kwargs)
    return per_view.mean(0), index


def bf16_native() -> bool:
    """Whether bf16 runs natively here: a CUDA GPU that has it, or a CPU with bf16 instructions (AVX512-BF16 /
    AMX). Without them bf16 is emulated, and on a CPU 10-20x slower than fp32 (measured: AMD Zen 3)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def precision(name: str) -> str:
    """train.mixed_precision resolved: `auto` is bf16 where it runs natively, else fp32 ("no")."""
    return ("bf16" if bf16_native() else "no") if name == "auto" else name


def make_accelerator(mixed_precision: str, **kwargs):
    """An Accelerator at train.mixed_precision `mixed_precision` (resolved by `precision`). Accelerate keeps one
    state per process and refuses a second precision in it (a ValueError), which a sweep whose trials vary
    train.mixed_precision, or a script that trains and predicts at two precisions, would hit. In a single
    process nothing outlives one training that needs that state, so it is reset; under `accelerate launch`
    with several processes the launcher's state stands."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    wanted = precision(mixed_precision)
    if AcceleratorState._shared_state and PartialState().num_processes == 1 \
            and str(AcceleratorState().mixed_precision) != wanted:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=wanted, **kwargs)
