"""Training throughput, four ways, each measured against a baseline in the same run:

    python benchmarks/train_throughput.py loader   [--data ROOT] [--size 96x128] [--workers 2] [--model resnet10t]
        the official baseline's loader (PIL decode + resize every epoch) against comp's loader (decode once
        into a uint8 memmap cache, augment uint8 in workers) and comp's full step. Goal (issue 3): >= 3x.
    python benchmarks/train_throughput.py vs-timm  --timm PATH/TO/pytorch-image-models --data ROOT [--people 400]
        timm's own train.py, run as it is on an ImageFolder view (symlinks) of the same people, model, size,
        batch, optimizer and threads, against `comp train` for one epoch each, alternating, twice; prints
        both training rates and their ratio. Goal (issue 18): comp >= 1.5x.
    python benchmarks/train_throughput.py ablation --data ROOT [--people 400] [--epochs 1] [--model M --size WxH]
        `comp train` one setting changed at a time (precision, channels_last, compile, loader workers, frozen
        stem and first stages): training images/s and validation macro F1.
    python benchmarks/train_throughput.py gpu [--people 2700] [--model tf_efficientnet_lite2] [--size 288x384]
        [--precision bf16] [--baseline no] [--batch 64] [--workers N]
        the GPU profile (issues 15 and 18): a synthetic set at 384x512 drawn on every core, `comp train` one
        epoch with the GPU visible, then the same in --baseline precision (fp32): images/s and the ratio,
        share of time waiting for data, peak memory, GPU utilisation.
        On a machine without a GPU it runs on the CPU (a smoke test: --people 12 --size 64x85 --model resnet10t).

Without --data, `loader` synthesises 60 people at the competition's 384x512 into a temporary folder.
Threads: every process gets the same OMP_NUM_THREADS (default: the machine's cores).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
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


def loader_main(args):
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



# ------------------------------------------------------------------------------- comp vs timm's train.py
def subset_root(src: Path, people: int, out: Path) -> Path:
    """A dataset root of `people` people of `src` (a fixed random sample; symlinks, nothing copied)."""
    df = pd.read_csv(src / "train" / "train.csv", dtype=str)
    df = df.sample(n=min(people, len(df)), random_state=0).sort_values("id") if people else df
    (out / "train" / "images").mkdir(parents=True)
    df.to_csv(out / "train" / "train.csv", index=False)
    for p in df["path"]:
        (out / "train" / "images" / p).symlink_to((src / "train" / "images" / p).resolve())
    (out / "eval").symlink_to((src / "eval").resolve())
    return out


def imagefolder_view(root: Path, out: Path) -> Path:
    """timm's ImageFolder layout of comp's fold 0 split of `root`: train/ and validation/, a folder per
    class named 00..17 (every sort order keeps class index = folder number), symlinks to the images."""
    from comp import runs

    cfg = load_config(None, [f"data.root={root}"])
    df = runs.train_frame(cfg)
    for path, label, fold in zip(df["path"], df["label"], df["fold"], strict=True):
        split = "validation" if fold == cfg.data.fold else "train"
        src = Path(path)
        dst = out / split / f"{label:02d}" / f"{src.parent.name}__{src.name}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(src.resolve())
    (out / "class_map.txt").write_text("".join(f"{c:02d}\n" for c in range(18)))
    return out


COMMON = dict(model="resnet18", size="96x128", batch=64, lr=3e-3, wd=0.05)  # the setting
TIMM_TRAIN = re.compile(r"Train: \d+ \[\s*(\d+)/(\d+).*?\(([\d.]+)s,\s*([\d.]+)/s\)")


def run_timm(timm_repo: Path, view: Path, out: Path, workers: int, env: dict) -> dict:
    w, h = COMMON["size"].split("x")
    cmd = [sys.executable, str(timm_repo / "train.py"), "--data-dir", str(view), "--train-split", "train",
           "--val-split", "validation", "--class-map", str(view / "class_map.txt"), "--model", COMMON["model"],
           "--num-classes", "18", "--input-size", "3", h, w, "-b", str(COMMON["batch"]), "--epochs", "1",
           "--device", "cpu", "-j", str(workers), "--opt", "adamw", "--lr", str(COMMON["lr"]),
           "--weight-decay", str(COMMON["wd"]), "--warmup-epochs", "0", "--log-interval", "5",
           "--checkpoint-hist", "1", "--output", str(out)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    rates = TIMM_TRAIN.findall(proc.stdout + proc.stderr)
    if proc.returncode or not rates:
        raise SystemExit(f"timm train.py failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    return {"images_per_s": float(rates[-1][3]), "wall_s": wall}  # train.py's own epoch-average rate


def run_comp(root: Path, out: Path, sets: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "comp.cli", "train", "--data", str(root), "--out", str(out), "--force",
           "--set", f"model.name={COMMON['model']}", "--set", f"data.size={COMMON['size']}",
           "--set", f"train.batch_size={COMMON['batch']}", "--set", "train.epochs=1",
           "--set", "optim.name=adamw", "--set", f"optim.lr={COMMON['lr']}",
           "--set", f"optim.weight_decay={COMMON['wd']}", "--set", "sched.warmup_epochs=0",
           "--set", "model.weights=none"]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "COMP_NO_PROGRESS": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"comp train failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    m = pd.read_csv(out / "fold0" / "metrics.csv").iloc[-1]
    return {"images_per_s": float(m["images_per_s"]), "wall_s": wall, "f1": float(m["f1"]),
            "data_wait": float(m["data_wait"]), "metrics": m}


class GpuSampler:
    """nvidia-smi's utilisation and memory, sampled every 0.5 s in the background (nothing without nvidia-smi)."""

    def __enter__(self):
        import shutil
        import threading

        self.samples, self.proc = [], None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "500"],
                                         stdout=subprocess.PIPE, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                util, mem = (float(v) for v in line.split(",")[:2])
                self.samples.append((util, mem))

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            self.proc.wait()

    def busy(self) -> dict | None:
        """Mean utilisation from the first busy sample on (the decode cache is built before it), and the most
        memory nvidia-smi saw (the process's whole footprint, CUDA context included)."""
        first = next((k for k, (u, _) in enumerate(self.samples) if u > 0), None)
        if first is None:
            return None
        s = self.samples[first:]
        return {"util": sum(u for u, _ in s) / len(s), "smi_mem_gib": max(m for _, m in s) / 1024}


def gpu_main(args):
    """The GPU profile: a synthetic set of --people at the competition's 384x512, drawn on every core, then
    `comp train` of one epoch on fold 0 with the GPU visible: training images/s, share of the epoch spent
    waiting for data, peak memory (torch's and nvidia-smi's), mean GPU utilisation."""
    from comp.data.synth import write_synth

    console = Console(width=160)
    COMMON.update(model=args.model, size=args.size, batch=args.batch)
    tmp = Path(args.work or tempfile.mkdtemp(prefix="comp-gpu-"))
    root = tmp / "data"
    if not (root / "train" / "train.csv").is_file():
        t = time.perf_counter()
        s = write_synth(root, people=args.people, eval_people=args.eval_people, size=(384, 512), seed=0,
                        workers=os.cpu_count() or 1, force=True)
        console.print(f"synthetic set: {s.train_images} train images of {args.people} people in "
                      f"{time.perf_counter() - t:.0f}s ({os.cpu_count()} processes)")
    env = {k: v for k, v in bench_env(args.threads).items() if k != "CUDA_VISIBLE_DEVICES"}
    env["COMP_CACHE_DIR"] = str(tmp / "cache")
    table = Table(title=f"comp train, one epoch: {args.model} {args.size} b{args.batch}, {args.people} people, "
                        f"{args.workers} loader workers, {torch.cuda.device_count()} GPU(s)")
    for col in ("precision", "images/s", "vs baseline", "data wait", "peak GiB (torch)", "peak GiB (nvidia-smi)",
                "GPU util", "epoch s", "run s"):
        table.add_column(col, justify="right")
    precisions = [args.precision] + ([args.baseline] if args.baseline != "none" else [])
    results = []
    for k, precision in enumerate(precisions):
        sets = [f"train.mixed_precision={precision}", f"data.workers={args.workers}", "model.channels_last=true"]
        with GpuSampler() as smi:
            c = run_comp(root, tmp / f"run{k}", [*sets, *args.set], env)
        c["gpu"] = smi.busy()
        results.append(c)
        console.print(f"{precision}: {c['images_per_s']:.0f} images/s, data wait {c['data_wait']:.0%}")
    base = results[-1]["images_per_s"]
    for k, (precision, c) in enumerate(zip(precisions, results, strict=True)):
        m, gpu = c["metrics"], c["gpu"]
        table.add_row(precision + (" (baseline)" if k and len(results) > 1 else ""), f"{c['images_per_s']:.0f}",
                      f"{c['images_per_s'] / base:.2f}x", f"{c['data_wait']:.0%}",
                      f"{m['gpu_peak_gib']:.1f}" if "gpu_peak_gib" in m else "—",
                      f"{gpu['smi_mem_gib']:.1f}" if gpu else "—", f"{gpu['util']:.0f} %" if gpu else "—",
                      f"{m['seconds']:.0f}", f"{c['wall_s']:.0f}" + (" (cache built)" if k == 0 else ""))
    console.print(table)


def bench_env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OMP_WAIT_POLICY")}
    return {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": "",
            "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def vs_timm_main(args):
    console = Console()
    tmp = Path(tempfile.mkdtemp(prefix="comp-vs-timm-"))
    env = {**bench_env(args.threads), "COMP_CACHE_DIR": str(tmp / "cache")}
    root = subset_root(args.data, args.people, tmp / "data")
    view = imagefolder_view(root, tmp / "view")
    n_train = sum(1 for _ in (view / "train").rglob("*") if _.is_symlink())
    console.print(f"{args.people} people of {args.data}: {n_train} training images (fold 0 held out); "
                  f"{COMMON}; {args.threads} threads, {args.workers} loader workers each")
    # the cache is built once before timing: it is a one-off cost (and shared by every later run of the data)
    run_comp(root, tmp / "warm", ["train.epochs=1", f"data.workers={args.workers}"], env)
    table = Table(title="one epoch each, alternating (training images/s)")
    for col in ("round", "timm train.py", "comp train", "comp / timm", "comp data wait"):
        table.add_column(col, justify="right")
    ratios = []
    for r in range(args.rounds):
        t = run_timm(args.timm, view, tmp / f"timm{r}", args.workers, env)
        c = run_comp(root, tmp / f"comp{r}", [f"data.workers={args.workers}", *args.set], env)
        ratios.append(c["images_per_s"] / t["images_per_s"])
        table.add_row(str(r + 1), f"{t['images_per_s']:.1f}", f"{c['images_per_s']:.1f}", f"{ratios[-1]:.2f}x",
                      f"{c['data_wait']:.0%}")
        console.print(f"round {r + 1}: timm {t['images_per_s']:.1f}, comp {c['images_per_s']:.1f} images/s")
    console.print(table)
    console.print(f"comp / timm train.py: {', '.join(f'{x:.2f}x' for x in ratios)} (goal >= 1.5x in every round)")


ABLATION = {  # name: comp train --set overrides, on top of the COMMON setting
    "fp32, channels_last, 2 workers (default)": [],
    "NCHW (channels_last off)": ["model.channels_last=false"],
    "loader in the training process (0 workers)": ["data.workers=0"],
    "torch.compile": ["train.compile=true"],
    "bf16 autocast": ["train.mixed_precision=bf16"],
    "frozen trunk start (model.freeze=N)": ["model.freeze={freeze}"],
}


def ablation_main(args):
    from comp.inference import bf16_native

    console = Console()
    COMMON.update(model=args.model, size=args.size, batch=args.batch)
    tmp = Path(tempfile.mkdtemp(prefix="comp-ablation-"))
    env = {**bench_env(args.threads), "COMP_CACHE_DIR": str(tmp / "cache")}
    root = subset_root(args.data, args.people, tmp / "data")
    run_comp(root, tmp / "warm", ["train.epochs=1"], env)  # builds the cache outside the timings
    table = Table(title=f"comp train, {COMMON['model']} {COMMON['size']} b{COMMON['batch']}, {args.epochs} epoch(s), "
                        f"{args.people} people, {args.threads} threads")
    for col in ("setting", "images/s", "vs default", "data wait", "val macro F1"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    base = None
    wanted = [w.strip() for w in args.only.split(",")] if args.only else None
    for name, sets in ABLATION.items():
        if wanted and not any(w in name for w in wanted):
            continue
        sets = [s.format(freeze=args.freeze) for s in sets]
        name = name.replace("=N)", f"={args.freeze})")
        if "bf16" in name and not bf16_native() and not args.emulated_bf16:
            table.add_row(name, "skipped", "", "", "no native bf16 here (emulated: 10-20x slower)")
            continue
        c = run_comp(root, tmp / "run", [*sets, f"train.epochs={args.epochs}"], env)
        base = base or c["images_per_s"]
        table.add_row(name, f"{c['images_per_s']:.1f}", f"{c['images_per_s'] / base:.2f}x", f"{c['data_wait']:.0%}",
                      f"{c['f1']:.4f}")
        console.print(f"{name}: {c['images_per_s']:.1f} images/s, F1 {c['f1']:.4f}")
    console.print(table)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    lo = sub.add_parser("loader")
    lo.add_argument("--data", type=Path)
    lo.add_argument("--size", default="96x128")
    lo.add_argument("--workers", type=int, default=2)
    lo.add_argument("--batch", type=int, default=64)
    lo.add_argument("--epochs", type=int, default=2)
    lo.add_argument("--model", default="resnet10t")
    for name in ("vs-timm", "ablation"):
        p = sub.add_parser(name)
        p.add_argument("--data", type=Path, required=True)
        p.add_argument("--people", type=int, default=400, help="people sampled from the data (0: all)")
        p.add_argument("--threads", type=int, default=os.cpu_count())
        p.add_argument("--workers", type=int, default=2)
    sub.choices["vs-timm"].add_argument("--timm", type=Path, required=True, help="a pytorch-image-models checkout")
    sub.choices["vs-timm"].add_argument("--rounds", type=int, default=2)
    sub.choices["vs-timm"].add_argument("--set", action="append", default=[], help="extra comp --set for the timed runs")
    sub.choices["ablation"].add_argument("--epochs", type=int, default=1)
    sub.choices["ablation"].add_argument("--model", default=COMMON["model"], help="e.g. tf_efficientnet_lite0")
    sub.choices["ablation"].add_argument("--size", default=COMMON["size"])
    sub.choices["ablation"].add_argument("--batch", type=int, default=COMMON["batch"])
    sub.choices["ablation"].add_argument("--freeze", type=int, default=4, help="model.freeze of the frozen row")
    sub.choices["ablation"].add_argument("--only", help="rows whose name holds one of these words, e.g. default,frozen")
    sub.choices["ablation"].add_argument("--emulated-bf16", action="store_true", help="time bf16 even where emulated")
    g = sub.add_parser("gpu")
    g.add_argument("--people", type=int, default=2700, help="synthetic train people (7 photos each, 384x512)")
    g.add_argument("--eval-people", type=int, default=10)
    g.add_argument("--model", default="tf_efficientnet_lite2")
    g.add_argument("--size", default="288x384")
    g.add_argument("--batch", type=int, default=64)
    g.add_argument("--precision", default="bf16", help="train.mixed_precision: bf16 | fp16 | no | auto")
    g.add_argument("--baseline", default="no", help="the precision timed after it for the ratio (none: skip)")
    g.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2), help="loader processes")
    g.add_argument("--threads", type=int, default=4, help="OMP threads of the training process")
    g.add_argument("--work", type=Path, help="keep the synthetic set and cache here (default: a temporary folder)")
    g.add_argument("--set", action="append", default=[], help="extra comp --set")
    args = ap.parse_args()
    {"loader": loader_main, "vs-timm": vs_timm_main, "ablation": ablation_main, "gpu": gpu_main}[args.what](args)


if __name__ == "__main__":
    main()
