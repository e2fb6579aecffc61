"""The `comp` command: a thin typer layer. Each command parses its options, calls one library function,
and prints a rich summary. User errors (`CompError`) become their message and exit code 2."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from typer.core import TyperGroup

from . import ui
from .data import labels as L
from .errors import CompError

console = ui.console


class _Group(TyperGroup):
    """Turns a CompError anywhere below into its lines on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompError as e:
            for line in e.lines:
                console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
            ctx.exit(e.exit_code)


def _app(help: str) -> typer.Typer:
    return typer.Typer(cls=_Group, help=help, no_args_is_help=True, add_completion=False,
                       pretty_exceptions_show_locals=False, rich_markup_mode="rich")


app = _app("comp — train, predict, ensemble and estimate for the mask x gender x age competition (macro F1).")
data_app = _app("Dataset tools: synthesise a demo set, check a dataset, crop faces.")
app.add_typer(data_app, name="data")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        assert w > 0 and h > 0
        return w, h
    except (ValueError, AssertionError):
        raise typer.BadParameter(f"{text!r}: expected WIDTHxHEIGHT, e.g. 96x128") from None


def _bins(young_below: int, old_from: int) -> L.AgeBins:
    try:
        return L.AgeBins(young_below, old_from)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


OLD_FROM = typer.Option(60, "--old-from", help="First age of the oldest group (teams tried 58).")
YOUNG_BELOW = typer.Option(30, "--young-below", help="Ages below this are the youngest group.")


# ---------------------------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the dataset root into."),
    people: int = typer.Option(120, help="Train people (7 photos each)."),
    eval_people: int = typer.Option(40, help="Eval people (7 photos each)."),
    size: str = typer.Option("96x128", help="Image size WIDTHxHEIGHT."),
    seed: int = typer.Option(0, help="Same seed, byte-identical dataset."),
    label_noise: float = typer.Option(0.0, min=0.0, max=1.0, help="Share of train people with a wrong recorded label."),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty OUT."),
):
    """Write a synthetic dataset in the competition's exact layout, with its answer key."""
    from .data.synth import write_synth

    s = write_synth(out, people=people, eval_people=eval_people, size=_size(size), seed=seed,
                    label_noise=label_noise, force=force)
    console.print(f"wrote {s.root}: {s.train_people} train people / {s.train_images} images, "
                  f"{s.eval_images} eval images + eval_truth.csv in {s.seconds:.1f}s")


@data_app.command("check")
def data_check(
    root: Path = typer.Argument(..., help="Dataset root holding train/ and eval/."),
    deep: bool = typer.Option(False, "--deep", help="Decode every image to find corrupt files."),
    relabel: Path = typer.Option(None, help="CSV of label fixes: id or image, then gender / age / mask."),
    old_from: int = OLD_FROM,
    young_below: int = YOUNG_BELOW,
):
    """Count people, images and classes; list every problem. Exit code 2 when the data cannot be used."""
    from .data.check import check_dataset

    bins = _bins(young_below, old_from)
    r = check_dataset(root, deep=deep, bins=bins, relabel=relabel)
    summary = Table(title=f"dataset {r.root}", show_header=False)
    summary.add_row("train people", str(r.people))
    summary.add_row("train images", str(len(r.train)))
    summary.add_row("eval images", str(len(r.eval)))
    summary.add_row("answer key", "eval_truth.csv" if r.truth is not None else "none (a real competition set)")
    console.print(summary)
    if len(r.train):
        console.print(_class_table(r.class_counts, bins))
        console.print(_head_table(r.head_counts(), bins))
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if r.problems:
        from .data.reader import problems_error

        for line in problems_error(r.problems).lines:
            console.print(f"[bold red]problem:[/] {line}", highlight=False, soft_wrap=True)
        console.print(f"[bold red]{len(r.problems)} problem(s): the data cannot be used as it is[/]")
        raise typer.Exit(2)
    console.print("[green]ok:[/] the data can be used")


def _class_table(counts, bins: L.AgeBins) -> Table:
    t = Table(title="train images per class")
    for col in ("class", "mask", "gender", "age", "images", "share"):
        t.add_column(col, justify="right" if col in ("class", "images", "share") else "left")
    total = max(int(counts.sum()), 1)
    for c in range(L.N_CLASSES):
        m, g, a = L.decode(c)
        t.add_row(str(c), L.MASK_NAMES[m], L.GENDERS[g], bins.names()[a], str(counts[c]), f"{counts[c] / total:.1%}")
    return t


def _head_table(heads, bins: L.AgeBins) -> Table:
    t = Table(title="train images per head")
    t.add_column("head")
    t.add_column("counts (share)")
    total = max(int(heads["mask"].sum()), 1)
    for h, counts in heads.items():
        t.add_row(h, "   ".join(f"{n}: {c} ({c / total:.0%})" for n, c in zip(L.head_names(h, bins), counts, strict=True)))
    return t


# --------------------------------------------------------------------------------------------- train
def _parse_folds(fold: int | None, folds: str | None, n: int) -> list[int] | None:
    if fold is not None and folds is not None:
        raise CompError("give --fold K or --folds all|K,K,..., not both")
    if folds is None:
        return None if fold is None else [fold]
    if folds == "all":
        return list(range(n))
    try:
        return sorted({int(k) for k in folds.split(",")})
    except ValueError:
        raise CompError(f"--folds {folds!r}: expected all or a list like 0,2") from None


@app.command("train")
def train_cmd(
    pipeline: Path = typer.Option(None, "--pipeline", "-p", help="YAML recipe from pipelines/."),
    data: Path = typer.Option(None, "--data", help="Dataset root (overrides data.root)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config key: --set train.epochs=3 (repeatable)."),
    fold: int = typer.Option(None, "--fold", help="Train this validation fold only (default data.fold)."),
    folds: str = typer.Option(None, "--folds", help="'all' (k-fold, writes oof.parquet) or a list like 0,2."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last saved epoch."),
    force: bool = typer.Option(False, "--force", help="Delete an existing run in --out and start over."),
):
    """Train a pipeline (any timm model) with Accelerate; k-fold with out-of-fold predictions."""
    from .config import load_config
    from .train.engine import train

    overrides = list(set_ or []) + ([f"data.root={data}"] if data else [])
    cfg = load_config(pipeline, overrides)
    out = out or Path("runs") / cfg.name
    result = train(cfg, out, _parse_folds(fold, folds, cfg.data.folds), resume=resume, force=force)
    t = Table(title=f"{cfg.name}: {cfg.model.name} ({cfg.model.head}) → {result.out}")
    for col in ("fold", "best epoch", "f1", "mask", "gender", "age", "acc", "minutes"):
        t.add_column(col, justify="right")
    for r in result.folds:
        b = r.best
        t.add_row(str(r.fold), str(r.best_epoch), f"{b.get('f1', 0):.4f}", f"{b.get('f1_mask', 0):.3f}",
                  f"{b.get('f1_gender', 0):.3f}", f"{b.get('f1_age', 0):.3f}", f"{b.get('acc', 0):.3f}",
                  f"{r.seconds / 60:.1f}")
    if result.oof:
        o = result.oof
        t.add_row("OOF", "", f"{o['f1']:.4f}", f"{o['f1_mask']:.3f}", f"{o['f1_gender']:.3f}", f"{o['f1_age']:.3f}",
                  f"{o['acc']:.3f}", "", style="bold")
    console.print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
