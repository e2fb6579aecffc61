"""Batched inference to 18-class probabilities, with test-time augmentation as a list of views.

Used by training (validation), predict, ensemble (soups) and explain, so every place gets the same
probabilities from the same checkpoint.
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
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            p = torch.stack([head.probs(model(v(x))) for v in views])
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
