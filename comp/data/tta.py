"""Test-time augmentation: named sets of views, each view a function of a normalised NCHW batch.

The registry is the single source of `predict.tta` / `--tta` names. A set's probabilities are averaged
over its views; the first view is always the image as it is.
"""
from __future__ import annotations

from collections.abc import Callable

from ..registry import Registry

View = Callable[["torch.Tensor"], "torch.Tensor"]  # noqa: F821 (torch is imported only where views run)

TTA_VIEWS = Registry("TTA view set", "predict.tta")


def identity(x):
    return x


def hflip(x):
    """Mirror left-right: the last (width) axis of NCHW."""
    return x.flip(-1)


def zoom(scale: float) -> View:
    """Enlarge by `scale` and centre-crop back: the model sees the face a little closer."""
    def view(x):
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        big = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        top, left = (big.shape[-2] - h) // 2, (big.shape[-1] - w) // 2
        return big[..., top:top + h, left:left + w]
    return view


def _zoom_then_flip(x):
    return hflip(zoom(1.1)(x))


TTA_VIEWS.register("none", [identity])
TTA_VIEWS.register("flip", [identity, hflip])
TTA_VIEWS.register("flip+scale", [identity, hflip, zoom(1.1), _zoom_then_flip])
