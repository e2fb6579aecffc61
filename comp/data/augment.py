"""Albumentations pipelines: presets by name or a list written in the YAML.

Augmentations run on the cached uint8 image at the training size, in DataLoader workers. Each sample is
augmented with its own seed (drawn by the sampler from the run's seed and the epoch), so a run is the
same whatever the number of workers, and a resumed run replays exactly.
"""
from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np

from ..errors import CompError
from ..registry import Registry

# name → albumentations ops. Geometric changes stay small: the mask must still sit where it sits (over the
# nose / on the chin).
PRESETS = Registry("augmentation preset", "augment.preset")
PRESETS.register("none", [])
PRESETS.register("light", [
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"scale": (0.92, 1.08), "translate_percent": (-0.04, 0.04), "rotate": (-8, 8),
                "border_mode": cv2.BORDER_REFLECT_101, "p": 0.7}},
    {"RandomBrightnessContrast": {"brightness_limit": 0.15, "contrast_limit": 0.15, "p": 0.5}},
])
PRESETS.register("strong", [
    {"HorizontalFlip": {"p": 0.5}},
    {"Affine": {"scale": (0.85, 1.15), "translate_percent": (-0.06, 0.06), "rotate": (-12, 12),
                "border_mode": cv2.BORDER_REFLECT_101, "p": 0.8}},
    {"ColorJitter": {"brightness": 0.25, "contrast": 0.25, "saturation": 0.25, "hue": 0.04, "p": 0.7}},
    {"ToGray": {"p": 0.05}},
    {"GaussNoise": {"std_range": (0.02, 0.08), "p": 0.2}},
    {"ImageCompression": {"quality_range": (50, 95), "p": 0.3}},
    {"CoarseDropout": {"num_holes_range": (1, 3), "hole_height_range": (0.05, 0.15),
                       "hole_width_range": (0.05, 0.15), "p": 0.3}},
])


def _make(spec: Any) -> A.BasicTransform:
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) and len(spec) == 1:
        name, kwargs = next(iter(spec.items()))
        kwargs = dict(kwargs or {})
    else:
        raise CompError(f"augment.ops: {spec!r} must be a name or a one-key mapping like {{HorizontalFlip: {{p: 0.5}}}}")
    cls = getattr(A, name, None)
    if not isinstance(cls, type) or not issubclass(cls, A.BasicTransform):
        raise CompError(f"augment.ops: {name!r} is not an albumentations transform (see albumentations.ai/docs)")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}  # YAML has no tuples
    try:
        return cls(**kwargs)
    except Exception as e:  # albumentations validates with pydantic and raises its own types
        raise CompError(f"augment.ops: {name}({kwargs}) was refused: {str(e).splitlines()[0]}") from None


def build_augment(preset: str = "light", ops: list | None = None) -> A.Compose | None:
    """The training transform, or None when there is nothing to do."""
    specs = ops if ops is not None else PRESETS.resolve(preset)
    if not specs:
        return None
    return A.Compose([_make(s) for s in specs])


def apply(transform: A.Compose | None, image: np.ndarray, seed: int | None) -> np.ndarray:
    """Runs `transform` on one HWC uint8 image; with a seed, reproducibly. Each transform gets its own
    stream (albumentations' own set_random_seed would give them all the same one)."""
    if transform is None:
        return image
    if seed is not None:
        seeds = np.random.SeedSequence(seed).generate_state(len(transform.transforms) + 1)
        transform.set_random_seed(int(seeds[0]))
        for t, s in zip(transform.transforms, seeds[1:], strict=True):
            t.set_random_seed(int(s))
    return transform(image=image)["image"]
