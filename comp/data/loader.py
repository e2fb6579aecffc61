"""Datasets, samplers and DataLoaders over cached images.

Batches travel as uint8 (4x less to copy than float); `to_input` normalises them on the device.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import augment
from .cache import ImageStore

SAMPLERS = ("uniform", "weighted")  # data.sampler: every image once per epoch | rare classes drawn more often


class EpochSampler(Sampler):
    """Yields (index, augmentation seed) pairs. The order is drawn from (seed, epoch) alone, so a resumed
    run sees exactly the batches the uninterrupted one saw. With `weights`, indices are drawn with
    replacement in proportion to them (the weighted sampler for rare classes)."""

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None):
        self.n, self.seed, self.epoch = n, seed, 0
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.n) if self.p is None else rng.choice(self.n, self.n, p=self.p)
        seeds = rng.integers(0, 2**31 - 1, self.n)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))

    def __len__(self) -> int:
        return self.n


class ImageDataset(Dataset):
    def __init__(self, store: ImageStore, labels: np.ndarray | None = None, transform=None):
        self.store, self.transform = store, transform
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        img = augment.apply(self.transform, self.store[i], seed)
        if not img.flags.writeable:  # a read-only memmap page: torch wants memory it may write
            img = img.copy()
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
        return x, (-1 if self.labels is None else int(self.labels[i])), i


def die_with_parent(_worker_id: int = 0) -> None:
    """A DataLoader worker ends when its parent does, even killed (Linux): otherwise a worker blocked on a
    full queue outlives a SIGKILLed training."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, sampler: Sampler | None = None,
                drop_last: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                      drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers > 0 else None,
                      worker_init_fn=die_with_parent if workers > 0 else None)


def sampler_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-image weights ∝ 1/sqrt(class count): rare classes come up more often without drowning the rest."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return 1.0 / np.sqrt(np.maximum(counts[labels], 1.0))


class Normalizer(torch.nn.Module):
    """uint8 NCHW batch → float, normalised, channels_last when asked; runs on the model's device."""

    def __init__(self, mean, std, channels_last: bool = False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255, persistent=False)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
