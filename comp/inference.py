"""Batched inference to 18-class probabilities, with test-time augmentation as a list of views.

Used by training (validation), predict, ensemble (soups) and explain, so every place gets the same
probabilities from the same checkpoint.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import ui
from .train.models import Head


def _flip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


def _zoom(scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Enlarge by `scale` and centre-crop back: the model sees the face a little closer."""
    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        big = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        top, left = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
        return big[..., top:top + h, left:left + w]
    return view


TTA_VIEWS: dict[str, list[Callable[[torch.Tensor], torch.Tensor]]] = {
    "none": [lambda x: x],
    "flip": [lambda x: x, _flip],
    "flip+scale": [lambda x: x, _flip, _zoom(1.1), lambda x: _flip(_zoom(1.1)(x))],
}


@torch.no_grad()
def predict_views(model: torch.nn.Module, head: Head, loader, normalize: torch.nn.Module, accelerator=None,
                  tta: str = "none", desc: str = "predicting") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities per view (V, N, 18) float32, dataset indices (N,)) in the loader's order.

    The loader yields (uint8 images, labels, indices); with Accelerate, batches of all processes are
    gathered, duplicates from uneven splitting dropped."""
    model.eval()
    views = TTA_VIEWS[tta]
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
