"""Eval images/s of `comp predict` with no TTA and with flip TTA, measured in one run on the same run
folder and images (the image cache is built once before timing, as a second predict would find it);
and comp's TTA (all views of a batch in one forward pass) against one forward pass per view, the same
model, images and views, timed in the same run.

    python benchmarks/predict_throughput.py [--run RUN] [--data ROOT] [--batch 128]

Without --run it synthesises a small dataset and trains a one-epoch demo run into a temporary folder.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from comp.config import load_config, read_run_config
from comp.predict import predict


def _demo_run(tmp: Path) -> Path:
    from comp.data.synth import write_synth
    from comp.train.engine import train

    root = write_synth(tmp / "synth", people=60, eval_people=60, size=(96, 128), seed=0).root
    cfg = load_config("pipelines/demo.yaml", [f"data.root={root}", "train.epochs=1", f"data.cache_dir={tmp / 'cache'}"])
    return train(cfg, tmp / "run").out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--repeat", type=int, default=2, help="Timed predictions per setting (the best is kept).")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    run = args.run or _demo_run(tmp)
    cfg = read_run_config(run)
    rows = {}
    predict([run], tmp / "warm.csv", args.data, "none", force=True)  # builds the eval image cache
    for tta in ("none", "flip", "flip+scale"):
        best = 0.0
        for _ in range(args.repeat):
            t = time.perf_counter()
            r = predict([run], tmp / f"{tta}.csv", args.data, tta, force=True)
            best = max(best, r.n / (time.perf_counter() - t))
        rows[tta] = (r.n, best)
    table = Table(title=f"comp predict: {run} ({cfg.model.name}, {cfg.data.size[0]}x{cfg.data.size[1]}, "
                        f"{len(r.prov.checkpoints)} checkpoint(s))")
    for col in ("TTA", "views", "eval images", "images/s", "vs no TTA"):
        table.add_column(col, justify="right")
    for tta, views in (("none", 1), ("flip", 2), ("flip+scale", 4)):
        n, ips = rows[tta]
        table.add_row(tta, str(views), str(n), f"{ips:,.0f}", f"{ips / rows['none'][1]:.2f}x")
    Console().print(table)
    Console().print(views_table(run, cfg, args.data, args.repeat))


def views_table(run: Path, cfg, data: Path | None, repeat: int) -> Table:
    """comp's batched views against a loop of one forward pass per view (the way before), same inputs."""
    import torch

    from comp import runs
    from comp.data.tta import TTA_VIEWS
    from comp.inference import predict_views
    from comp.models import normalizer

    ev = runs.eval_frame(cfg, data)
    loader = runs.image_loader(cfg, ev["path"].tolist(), batch_size=cfg.predict.batch_size)
    model, head, _ = runs.load_run(run, runs.trained_folds(run)[0], "best")
    norm = normalizer(cfg, model, cfg.model.channels_last)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.eval()
    table = Table(title="TTA: views in one forward pass vs one pass per view")
    for col in ("TTA", "one pass per view", "batched (comp)", "ratio"):
        table.add_column(col, justify="right")
    for tta in ("flip", "flip+scale"):
        views = TTA_VIEWS[tta]

        def per_view(views=views):
            with torch.inference_mode():
                for x, _, _ in loader:
                    x = norm(x)
                    torch.stack([head.probs(model(v(x))) for v in views])

        def batched(tta=tta):
            predict_views(model, head, loader, norm, tta=tta)
        rates = []
        for fn in (per_view, batched):
            best = 0.0
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                best = max(best, len(ev) / (time.perf_counter() - t))
            rates.append(best)
        table.add_row(tta, f"{rates[0]:,.0f}", f"{rates[1]:,.0f}", f"{rates[1] / rates[0]:.2f}x")
    return table


if __name__ == "__main__":
    main()
