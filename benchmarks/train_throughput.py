"""Images/s of the official baseline's loader (PIL decode + resize every epoch) against comp's loader
(decode once at reduced scale into a uint8 memmap cache, augment uint8 in workers) and comp's full
training step, measured in one run on the same images.

    python benchmarks/train_throughput.py [--data ROOT] [--size 96x128] [--workers 2] [--model resnet10t]

Without --data it synthesises 60 people at the competition's 384x512 into a temporary folder.
Goal (issue 3): comp's loader >= 3x the plain loader.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from timm.data.mixup import mixup_target
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from comp.config import load_config
from comp.data.augment import build_augment
from comp.data.cache import build_store
from comp.data.loader import EpochSampler, ImageDataset, make_loader
from comp.data.reader import load_train
from comp.models import Head, create_model, normalizer
from comp.train.losses import Criterion


class PlainPIL(Dataset):
    """The official baseline's way: open, convert, resize, to tensor, normalise: every image, every epoch."""

    def __init__(self, paths, labels, size):
        self.paths, self.labels = paths, labels
        self.tf = transforms.Compose([transforms.Resize((size[1], size[0])), transforms.ToTensor(),
                                      transforms.Normalize((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def images_per_s(loader, epochs: int, step=None) -> float:
    n, t = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            if step is not None:
                step(batch)
            n += len(batch[0])
    return n / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--size", default="96x128")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="resnet10t")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    tmp = tempfile.TemporaryDirectory()
    root = args.data
    if root is None:
        from comp.data.synth import write_synth

        root = write_synth(Path(tmp.name) / "synth", people=60, eval_people=2, size=(384, 512), seed=0).root
    df = load_train(root)
    paths, labels = df["path"].tolist(), df["label"].to_numpy()
    console = Console()
    console.print(f"{len(paths)} images from {root}, target {size[0]}x{size[1]}, {args.workers} workers, "
                  f"{torch.get_num_threads()} torch threads")

    plain = DataLoader(PlainPIL(paths, labels, size), batch_size=args.batch, shuffle=True, num_workers=args.workers)
    plain_ips = images_per_s(plain, args.epochs)

    t = time.perf_counter()
    store = build_store(paths, size, "disk", Path(tmp.name) / "cache", args.workers)
    build_s = time.perf_counter() - t
    ds = ImageDataset(store, labels, build_augment("light"))
    sampler = EpochSampler(len(ds), 0)
    comp_loader = make_loader(ds, args.batch, args.workers, sampler=sampler, drop_last=True)
    comp_ips = images_per_s(comp_loader, args.epochs)

    cfg = load_config(None, [f"model.name={args.model}"])
    head = Head("multiclass")
    model = create_model(cfg.model, head).to(memory_format=torch.channels_last).train()
    norm = normalizer(cfg, model, channels_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    crit = Criterion(cfg.loss, head)

    def step(batch):
        x, y, _ = batch
        loss = crit(model(norm(x)), mixup_target(y, 18))
        loss.backward()
        opt.step()
        opt.zero_grad()

    train_ips = images_per_s(comp_loader, 1, step)

    table = Table(title="training input pipeline, same images, same run")
    for col in ("what", "images/s", "vs plain loader"):
        table.add_column(col, justify="right" if col != "what" else "left")
    table.add_row("plain PIL loader (decode + resize every epoch)", f"{plain_ips:,.0f}", "1.00x")
    table.add_row(f"comp cache build (once; {build_s:.1f}s)", f"{len(paths) / build_s:,.0f}", f"{len(paths) / build_s / plain_ips:.2f}x")
    table.add_row("comp loader (cached uint8 + light augment)", f"{comp_ips:,.0f}", f"{comp_ips / plain_ips:.2f}x")
    table.add_row(f"comp full training step ({args.model})", f"{train_ips:,.0f}", f"{train_ips / plain_ips:.2f}x")
    console.print(table)
    console.print(f"comp loader / plain loader = {comp_ips / plain_ips:.2f}x (goal >= 3x); the model "
                  f"{'waits for' if comp_ips < 1.5 * train_ips else 'does not wait for'} the loader")


if __name__ == "__main__":
    main()
