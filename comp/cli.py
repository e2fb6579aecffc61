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


# ------------------------------------------------------------------------------------------- predict
@app.command("predict")
def predict_cmd(
    run: list[Path] = typer.Argument(..., help="Run folder(s) from `comp train`; a k-fold run means all its folds."),
    data: Path = typer.Option(None, "--data", help="Dataset root holding eval/ (default: the run's data.root)."),
    out: Path = typer.Option(None, "--out", "-o", help="Submission CSV (default submissions/<run>.csv)."),
    tta: str = typer.Option(None, "--tta", help="none | flip | flip+scale (default: the run's predict.tta)."),
    ckpt: str = typer.Option("best", "--ckpt", help="best | last checkpoint of each fold."),
    force: bool = typer.Option(False, "--force", help="Replace an existing submission of that name."),
    validate: bool = typer.Option(False, "--validate", help="Score the runs' validation folds with and without TTA instead."),
):
    """TTA inference → submission CSV + .probs.npy + .json (or --validate: what TTA buys)."""
    from .predict import predict, validate as run_validate

    if validate:
        t = Table(title="validation folds, without and with TTA")
        for col in ("run", "TTA", "images", "f1", "mask", "gender", "age", "acc"):
            t.add_column(col, justify="left" if col in ("run", "TTA") else "right")
        keys = ("f1", "f1_mask", "f1_gender", "f1_age", "acc")
        for v in run_validate(run, tta, ckpt):
            name = f"{v.run.name} (folds {','.join(map(str, v.folds))})"
            t.add_row(name, "none", str(v.images), *(f"{v.plain[k]:.4f}" for k in keys))
            t.add_row("", v.tta_name, "", *(f"{v.tta[k]:.4f}" for k in keys), end_section=True)
        console.print(t)
        return
    out = out or Path("submissions") / f"{run[0].name}.csv"
    r = predict(run, out, data, tta, ckpt, force)
    t = Table(title=f"submission {r.csv}", show_header=False)
    t.add_row("runs", ", ".join(r.meta["runs"]))
    t.add_row("models", ", ".join(r.meta["models"].values()))
    t.add_row("checkpoints", f"{len(r.meta['checkpoints'])} ({ckpt})")
    t.add_row("TTA", r.meta["tta"])
    t.add_row("images", f"{r.n} in {r.seconds:.1f}s ({r.images_per_s:.0f}/s)")
    t.add_row("files", f"{r.csv.name}, {r.csv.stem}.probs.npy, {r.csv.stem}.json")
    if r.scores:
        for part in ("public", "private"):
            s = r.scores[part]
            t.add_row(f"{part} (answer key)", f"F1 {s['f1']:.4f}  accuracy {s['acc']:.2f}%  (n={s['n']})")
    console.print(t)


# ------------------------------------------------------------------------------------------ ensemble
def _scores_table(title: str, scores: dict, last_bold: bool = True) -> Table:
    t = Table(title=title)
    for col in ("input", "public F1", "private F1", "public acc", "private acc"):
        t.add_column(col, justify="left" if col == "input" else "right")
    items = list(scores.items())
    for i, (name, s) in enumerate(items):
        t.add_row(name, f"{s['public']['f1']:.4f}", f"{s['private']['f1']:.4f}", f"{s['public']['acc']:.2f}%",
                  f"{s['private']['acc']:.2f}%", style="bold" if last_bold and i == len(items) - 1 else None)
    return t


@app.command("ensemble")
def ensemble_cmd(
    inputs: list[Path] = typer.Argument(..., help="Submission CSVs; with --fit or --soup, run folders (or checkpoints)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV (a run folder with --soup)."),
    method: str = typer.Option("vote", "--method", "-m",
                               help="vote | per-task | soft | geo. Ties in a vote go to the input with the larger "
                                    "weight, then to the one listed first."),
    weights: str = typer.Option(None, "--weights", "-w", help="Comma-separated weights, e.g. 2,1,1 (default equal)."),
    fit_: bool = typer.Option(False, "--fit", help="Inputs are runs: fit weights and class biases on their OOF files."),
    soup_: bool = typer.Option(False, "--soup", help="Inputs are runs/checkpoints of one architecture: average weights."),
    soup_kind: str = typer.Option("greedy", "--soup-kind", help="greedy | uniform (with --soup)."),
    data: Path = typer.Option(None, "--data", help="Dataset root for --fit predictions (default: the runs')."),
    tta: str = typer.Option(None, "--tta", help="TTA of the eval predictions --fit makes (default: the runs')."),
    truth: Path = typer.Option(None, "--truth", help="Answer key (ImageID,ans,Usage) to score inputs and result."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output."),
):
    """Blend submissions (vote / per-task / soft / geo), fit a blend of runs on OOF, or make a model soup."""
    from . import ensemble

    if fit_ and soup_:
        raise CompError("--fit and --soup are different things; choose one")
    if soup_:
        from .soup import make_soup

        r = make_soup(inputs, out, soup_kind, force)
        t = Table(title=f"model soup → {r.out} ({r.kind})")
        t.add_column("ingredient")
        t.add_column("validation F1", justify="right")
        t.add_column("in greedy soup", justify="center")
        for i, ing in enumerate(r.ingredients):
            t.add_row(str(ing.ckpt), f"{ing.f1:.4f}", "yes" if i in r.greedy_members else "")
        t.add_row("uniform soup", f"{r.uniform_f1:.4f}", "", style="bold")
        t.add_row("greedy soup", f"{r.greedy_f1:.4f}", "", style="bold")
        console.print(t)
        return
    if fit_:
        r = ensemble.fit(inputs, out, data, tta, force=force)
        t = Table(title="out-of-fold macro F1 (train labels)")
        for col in ("what", "f1", "mask", "gender", "age", "acc"):
            t.add_column(col, justify="left" if col == "what" else "right")
        for name, s in r.plan.oof.items():
            t.add_row(name, *(f"{s[k]:.4f}" for k in ("f1", "f1_mask", "f1_gender", "f1_age", "acc")))
        console.print(t)
        console.print("weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(r.names, r.plan.weights, strict=True)))
        if r.plan.use_bias:
            shifted = {c: round(float(b), 2) for c, b in enumerate(r.plan.bias) if b}
            console.print(f"class bias (log-prior shift): {shifted}")
        else:
            console.print("class bias: not used (it did not raise held-out F1)")
        if r.scores:
            console.print(_scores_table("answer key", r.scores))
        console.print(f"wrote {r.out} (+ .probs.npy, .json)")
        return
    w = None
    if weights:
        try:
            w = [float(v) for v in weights.split(",")]
        except ValueError:
            raise CompError(f"--weights {weights!r}: expected numbers like 2,1,1") from None
    r = ensemble.blend_files(inputs, out, w, method, force, truth)
    t = Table(title=f"agreement between inputs ({r.method} → {r.out.name})")
    t.add_column("")
    for n in r.names:
        t.add_column(n, justify="right")
    t.add_column("rows changed by the blend", justify="right")
    for i, n in enumerate(r.names):
        t.add_row(n, *(f"{a:.1%}" for a in r.agreement[i]), str(r.changed[i]))
    console.print(t)
    if r.scores:
        console.print(_scores_table("answer key", r.scores))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
