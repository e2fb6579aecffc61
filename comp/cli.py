"""The `comp` command: a thin typer layer. Each command parses its options, calls one library function,
and prints a rich summary. User errors (`CompError`) become their message and exit code 2."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from . import ui
from .blend import METHODS
from .data import labels as L
from .data.detectors import DETECTORS
from .data.tta import TTA_VIEWS
from .errors import CompError
from .ledger import DAILY_LIMIT
from .sweep import DEFAULT_HEARTBEAT, GRACE_BEATS, KNOBS, PRUNERS

console = ui.console


class _Group(TyperGroup):
    """Turns a CompError anywhere below into its lines on stderr and exit code 2 (no traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CompError as e:
            for line in e.lines:
                console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # the disk, not the input: full, read-only, permissions
            where = f"{e.filename}: " if e.filename else ""
            console.print(f"[bold red]error:[/] {escape(where + (e.strerror or str(e)))}", highlight=False, soft_wrap=True)
            ctx.exit(2)


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
    workers: int = typer.Option(1, min=1, help="Processes drawing the people (the files are the same for any number)."),
):
    """Write a synthetic dataset in the competition's exact layout, with its answer key."""
    from .data.synth import write_synth

    s = write_synth(out, people=people, eval_people=eval_people, size=_size(size), seed=seed,
                    label_noise=label_noise, force=force, workers=workers)
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
    if r.images:
        console.print(_image_table(r.images))
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if r.problems:
        from .data.reader import problems_error

        for line in problems_error(r.problems).lines:
            console.print(f"[bold red]problem:[/] {escape(line)}", highlight=False, soft_wrap=True)
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


def _image_table(profiles) -> Table:
    t = Table(title="images (from their files)")
    for col in ("split", "images", "sizes (w x h, upright)", "formats", "colour", "EXIF-rotated"):
        t.add_column(col, justify="right" if col in ("images", "EXIF-rotated") else "left")

    def top(p, counter, fmt=str, k=3) -> str:
        items = [f"{fmt(key)} {p.share(counter, key):.0%}" for key, _ in counter.most_common(k)]
        return ", ".join(items) + (f", +{len(counter) - k} more" if len(counter) > k else "")

    for split, p in profiles.items():
        t.add_row(split, str(p.images), top(p, p.sizes, lambda s: f"{s[0]}x{s[1]}"), top(p, p.formats),
                  top(p, p.modes), str(p.rotated))
    return t


def _head_table(heads, bins: L.AgeBins) -> Table:
    t = Table(title="train images per head")
    t.add_column("head")
    t.add_column("counts (share)")
    total = max(int(heads["mask"].sum()), 1)
    for h, counts in heads.items():
        t.add_row(h, "   ".join(f"{n}: {c} ({c / total:.0%})" for n, c in zip(L.head_names(h, bins), counts, strict=True)))
    return t


@data_app.command("crop")
def data_crop(
    root: Path = typer.Argument(..., help="Dataset root holding train/ and eval/."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the cropped copy (same layout + crops.csv)."),
    detector: str = typer.Option("mtcnn", "--detector", "-d", help=f"{DETECTORS.choices} (yolo takes --weights; the others ship theirs)."),
    margin: float = typer.Option(0.3, "--margin", help="Share of the face size added on each side."),
    size: str = typer.Option(None, "--size", help="Resize crops to WIDTHxHEIGHT (default: keep their pixels, 3:4)."),
    weights: Path = typer.Option(None, "--weights", help="Weights file of --detector yolo."),
):
    """Crop every image to its face (misses fall back to the person's or a prior box); resumable."""
    from .data.crop import crop_dataset

    r = crop_dataset(root, out, detector, margin, _size(size) if size else None, weights)
    t = Table(title=f"{r.detector} crops → {r.out}")
    for col in ("mask", "images", "detected", "rate", "fallback person", "fallback prior", "whole image"):
        t.add_column(col, justify="left" if col == "mask" else "right")
    for mask, row in r.rates().iterrows():
        n = {k: str(int(row[k])) for k in ("images", "detected", "person", "prior", "image")}
        t.add_row(str(mask), n["images"], n["detected"], f"{row['rate']:.1%}", n["person"], n["prior"], n["image"],
                  style="bold" if mask == "all" else None)
    console.print(t)
    if r.processed:
        console.print(f"detected {r.processed} images in {r.seconds:.1f}s ({r.images_per_s:.1f} images/s)")
    else:
        console.print("nothing to do: the copy was already complete")


# --------------------------------------------------------------------------------------------- train
def _parse_folds(fold: int | None, folds: str | None, n: int) -> list[int] | None:
    from .runs import parse_folds

    if fold is not None and folds is not None:
        raise CompError("give --fold K or --folds all|full|K,K,..., not both")
    if folds is None:
        return None if fold is None else [fold]
    return parse_folds(folds, n)


@app.command("train")
def train_cmd(
    pipeline: Path = typer.Option(None, "--pipeline", "-p", help="YAML recipe from pipelines/."),
    data: Path = typer.Option(None, "--data", help="Dataset root (overrides data.root)."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default runs/<name>)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a config key: --set train.epochs=3 (repeatable)."),
    fold: int = typer.Option(None, "--fold", help="Train this validation fold only (default data.fold)."),
    folds: str = typer.Option(None, "--folds", help="'all' (k-fold, writes oof.parquet), a list like 0,2, or 'full': "
                              "one model on every person for train.epochs, nothing held out (the final refit)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last saved epoch."),
    force: bool = typer.Option(False, "--force", help="Delete an existing run in --out and start over."),
):
    """Train a pipeline (any timm model) with Accelerate; k-fold with out-of-fold predictions."""
    from .config import load_config
    from .runs import fold_name
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
        scores = ([f"{b['f1']:.4f}"] + [f"{b[k]:.3f}" for k in ("f1_mask", "f1_gender", "f1_age", "acc")]
                  if "f1" in b else ["(nobody held out)", "", "", "", ""])
        t.add_row(fold_name(r.fold), str(r.best_epoch), *scores, f"{r.seconds / 60:.1f}")
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
    tta: str = typer.Option(None, "--tta", help=f"{TTA_VIEWS.choices} (default: the run's predict.tta)."),
    ckpt: str = typer.Option("best", "--ckpt", help="best | last checkpoint of each fold."),
    force: bool = typer.Option(False, "--force", help="Replace an existing submission of that name."),
    validate: bool = typer.Option(False, "--validate", help="Score the runs' validation folds with and without TTA instead."),
):
    """TTA inference → submission CSV + .probs.npy + .json (or --validate: what TTA buys)."""
    from .predict import predict
    from .predict import validate as run_validate

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
    t.add_row("runs", ", ".join(r.prov.runs))
    t.add_row("models", ", ".join(r.prov.stats["models"].values()))
    t.add_row("checkpoints", f"{len(r.prov.checkpoints)} ({ckpt})")
    t.add_row("TTA", r.prov.tta)
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
                               help=f"{METHODS.choices}. Ties in a vote go to the input with the larger "
                                    "weight, then to the one listed first."),
    weights: str = typer.Option(None, "--weights", "-w", help="Comma-separated weights, e.g. 2,1,1 (default equal)."),
    fit_: bool = typer.Option(False, "--fit", help="Inputs are runs: fit weights and class biases on their OOF files (or, for runs of some folds, on those held-out folds)."),
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
        t = Table(title=f"held-out macro F1 (train labels; {r.images} images of fold{'s' * (len(r.folds) > 1)} "
                        f"{', '.join(map(str, r.folds))})")
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


# ---------------------------------------------------------------------------- submissions & estimate
subs_app = _app("The ledger of scored submissions (submissions/ledger.csv).")
app.add_typer(subs_app, name="submissions")
LEDGER_DIR = typer.Option(Path("submissions"), "--dir", help="Folder holding the ledger and the CSVs.")


@subs_app.command("add")
def submissions_add(
    file: Path = typer.Argument(..., help="The CSV you submitted."),
    public_f1: float = typer.Option(None, "--public-f1", help="Its public leaderboard macro F1."),
    public_acc: float = typer.Option(None, "--public-acc", help="Its public accuracy in percent, if shown."),
    truth: Path = typer.Option(None, "--truth", help="Score it against this answer key's Public rows instead "
                                                     "(a simulated leaderboard for synthetic / benchmark sets)."),
    note: str = typer.Option("", "--note", help="What it was."),
    data: Path = typer.Option(None, "--data", help="Dataset root whose eval/info.csv the CSV must match "
                                                   "(default: the one its .json names)."),
    folder: Path = LEDGER_DIR,
):
    """Record a scored submission: copies the CSV (+ .probs.npy, .json) and appends a ledger row. A CSV
    the leaderboard would refuse (missing, extra or reordered rows) or one already recorded is refused."""
    from .ledger import add, read_ledger

    if truth is not None:
        from .data.reader import read_truth
        from .submission import read_submission, score

        if public_f1 is not None:
            raise CompError("give --public-f1 or --truth, not both")
        sub = read_submission(file)
        s = score(sub.ids, sub.ans, read_truth(truth))["public"]
        public_f1, public_acc = s["f1"], s["acc"]
    elif public_f1 is None:
        raise CompError("give the leaderboard's score with --public-f1 F (or --truth KEY.csv to simulate it)")
    e = add(file, public_f1, public_acc, note, folder, data=data)
    console.print(f"added {e.name} (public F1 {e.public_f1:.4f}) to {folder}/ledger.csv "
                  f"({len(read_ledger(folder))} submissions)")


@subs_app.command("list")
def submissions_list(
    folder: Path = LEDGER_DIR,
    daily_limit: int = typer.Option(DAILY_LIMIT, "--daily-limit", help="Submissions allowed per day (UTC)."),
):
    """Scored submissions, best first, and today's slots."""
    from .ledger import read_ledger, used_today

    entries = read_ledger(folder)
    t = Table(title=f"{folder}/ledger.csv")
    for col in ("#", "name", "public F1", "public acc", "time (UTC)", "note"):
        t.add_column(col, justify="right" if col in ("#", "public F1", "public acc") else "left")
    for i, e in enumerate(sorted(entries, key=lambda e: -e.public_f1), start=1):
        t.add_row(str(i), e.name, f"{e.public_f1:.4f}", "" if e.public_acc is None else f"{e.public_acc:.2f}%",
                  e.time.replace("+00:00", ""), e.note)
    console.print(t)
    used = used_today(entries)
    console.print(f"slots used today: {used} of {daily_limit}" + (" — none left" if used >= daily_limit else ""))


@app.command("estimate")
def estimate_cmd(
    new: list[Path] = typer.Argument(..., help="The CSV to estimate (its .probs.npy / .json are used when present); "
                                               "several: each estimated, then ranked."),
    ref: list[Path] = typer.Option(None, "--ref", help="A scored submission (repeatable; default: the ledger's)."),
    ref_f1: list[float] = typer.Option(None, "--ref-f1", help="Public F1 of each --ref, in order (none: each "
                                                              "--ref's scores from the ledger)."),
    ref_acc: list[float] = typer.Option(None, "--ref-acc", help="Public accuracy (percent) of each --ref, in order."),
    folder: Path = LEDGER_DIR,
    data: Path = typer.Option(None, "--data", help="Dataset root for the train class shares (default: the one the "
                                                   "CSVs' JSON names, else the one in data/ whose eval/info.csv lists "
                                                   "their ImageIDs)."),
    truth: Path = typer.Option(None, "--truth", help="Answer key, to print the true score beside the estimate."),
    samples: int = typer.Option(2000, "--samples", help="Label draws (more: smoother interval)."),
    self_check: bool = typer.Option(True, "--self-check/--no-self-check",
                                    help="With >= 3 scored submissions in the ledger: estimate each from the others, "
                                         "and correct and widen this estimate by how that went."),
    json_: bool = typer.Option(False, "--json", help="Print only the JSON result (a list of them for several CSVs)."),
):
    """Estimate a CSV's public leaderboard F1 and accuracy from scored references, before submitting it; given
    several candidates, rank them (the ledger's self-check runs once for all)."""
    import json

    from .estimate import estimate_files
    from .ui import make_progress, progress_enabled

    ledger_file = (folder / "ledger.csv").resolve()
    if any(p.resolve() == ledger_file for p in new):  # `comp estimate submissions/*.csv` catches the ledger itself
        new = [p for p in new if p.resolve() != ledger_file]
        if not new:
            raise CompError(f"{folder}/ledger.csv is the ledger, not a submission: give the CSVs to estimate")
        if not json_:
            console.print(f"[dim]skipped {folder}/ledger.csv: the ledger, not a submission[/]")
    bar = make_progress() if progress_enabled() and not json_ else None
    task = None

    def progress(done: int, total: int) -> None:
        nonlocal task
        if bar is not None:
            if task is None:
                bar.start()
                task = bar.add_task("self-check: each scored submission from the others", total=total, info="")
            bar.update(task, completed=done)
            if done == total:
                bar.stop()

    ests = estimate_files(new, ref, ref_f1, ref_acc, folder, data, samples, self_check=self_check, progress=progress)
    true = _true_scores(new, truth) if truth is not None else None
    if json_:
        rows = [e.as_json() | ({"true_public_f1": round(true[i]["f1"], 4)} if true else {}) for i, e in enumerate(ests)]
        print(json.dumps(rows[0] if len(new) == 1 else [{"csv": str(p)} | r for p, r in zip(new, rows, strict=True)]))
        return
    if len(new) == 1:
        _print_estimate(new[0], ests[0], true[0] if true else None)
    else:
        _print_ranking(new, ests, true)


def _true_scores(paths: list[Path], truth: Path) -> list[dict]:
    """Each CSV's public score ({"f1", "acc"}) on an answer key (a benchmark or synthetic set): printed beside its
    estimate."""
    from .data.reader import read_truth
    from .submission import read_submission, score

    key = read_truth(truth)
    return [score(s.ids, s.ans, key)["public"] for s in map(read_submission, paths)]


def _print_estimate(new: Path, e, true: dict | None) -> None:
    t = Table(title=f"estimate for {new.name}", show_header=False)
    t.add_row("public macro F1", f"[bold]{e.f1:.4f}[/]  (90% interval {e.f1_interval[0]:.4f} – {e.f1_interval[1]:.4f})")
    if e.accuracy is None:
        t.add_row("public accuracy", "not estimated: no reference accuracy given (--ref-acc, or --public-acc in the ledger)")
    else:
        t.add_row("public accuracy", f"{e.accuracy:.2f}%  (90% interval {e.accuracy_interval[0]:.2f} – "
                  f"{e.accuracy_interval[1]:.2f}%)")
    if true is not None:
        t.add_row("true score (answer key)", f"public F1 {true['f1']:.4f}, accuracy {true['acc']:.2f}%")
    console.print(t)
    a = Table(title="agreement with the references")
    for col in ("reference", "all", "mask", "gender", "age"):
        a.add_column(col, justify="left" if col == "reference" else "right")
    for g in e.agreement:
        a.add_row(g.name, f"{g.overall:.1%}", *(f"{g.heads[h]:.1%}" for h in ("mask", "gender", "age")))
    console.print(a)
    if e.class_changes:
        c = Table(title=f"classes where it differs most from {e.best_ref}")
        for col in ("class", e.best_ref, new.name, "rows changed"):
            c.add_column(col, justify="left" if col == "class" else "right")
        for row in e.class_changes[:6]:
            c.add_row(row["class"], str(row["ref"]), str(row["new"]), str(row["rows_changed"]))
        console.print(c)
    for line in e.evidence:
        console.print(f"[dim]evidence: {escape(line)}[/]", highlight=False)
    for w in e.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    console.print(f"P(beats the best reference {e.best_ref}, {e.best_ref_f1:.4f}) = [bold]{e.p_better:.0%}[/]")
    if e.self_check:
        console.print(f"[bold]self-check[/] {escape(e.self_check)} (estimate before the ledger's correction "
                      f"{e.raw_f1:.4f})", highlight=False)


def _print_ranking(paths: list[Path], ests: list, true: list[dict] | None) -> None:
    """Several candidates, best estimate first: which to spend a slot on."""
    order = sorted(range(len(paths)), key=lambda i: -ests[i].f1)
    best = max(ests, key=lambda e: e.best_ref_f1)
    t = Table(title=f"{len(paths)} candidates, best estimate first (best reference {best.best_ref}, "
                    f"{best.best_ref_f1:.4f})")
    cols = ["#", "CSV", "public F1", "90% interval", "P(beats best)", "agreement", "NEW measured by"]
    for col in cols + (["true public F1"] if true else []):
        t.add_column(col, justify="left" if col in ("CSV", "NEW measured by") else "right", no_wrap=col == "CSV")
    for rank, i in enumerate(order, start=1):
        e = ests[i]
        t.add_row(str(rank), paths[i].name, f"[bold]{e.f1:.4f}[/]", f"{e.f1_interval[0]:.4f}–{e.f1_interval[1]:.4f}",
                  f"{e.p_better:.0%}", f"{e.agreement[0].overall:.1%}" if e.agreement else "",
                  "its known score" if e.measured_by.startswith("identical to") else e.measured_by,
                  *([f"{true[i]['f1']:.4f}"] if true else []))
    console.print(t)
    warned: dict[str, list[str]] = {}  # a reference's warning holds for every candidate estimated against it
    for i in order:
        for w in ests[i].warnings:
            warned.setdefault(w, []).append(paths[i].name)
    for w, names in warned.items():
        console.print(f"[yellow]warning ({escape(', '.join(dict.fromkeys(names)))}):[/] {escape(w)}", highlight=False)
    checks = {e.self_check for e in ests if e.self_check}
    for line in checks:
        console.print(f"[bold]self-check[/] {escape(line)}", highlight=False)
    console.print("[dim]the evidence behind one estimate: comp estimate CSV (one CSV)[/]")


# ------------------------------------------------------------------------------------------- weights
weights_app = _app("Pretrained weights: convert a checkpoint to a timm model's names (model.weights takes it).")
app.add_typer(weights_app, name="weights")


def _rgb(option: str, text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise CompError(f"{option} {text!r}: expected three numbers R,G,B on the 0-1 scale, e.g. 0.5,0.5,0.5")
    return values  # type: ignore[return-value]


@weights_app.command("import")
def weights_import(
    file: str = typer.Argument(..., help="A .pth / .safetensors checkpoint, or package:NAME."),
    model: str = typer.Option(..., "--model", "-m", help="The timm architecture they are weights of, e.g. tf_efficientnet_lite0."),
    out: Path = typer.Option(..., "--out", "-o", help="The converted file, NAME.safetensors (then model.weights=NAME.safetensors)."),
    mean: str = typer.Option(None, "--mean", help="Input mean the weights were trained with, R,G,B on the 0-1 scale "
                                                  "(default: the file's metadata, else timm's for --model)."),
    std: str = typer.Option(None, "--std", help="Input std, with --mean."),
    all_: bool = typer.Option(False, "--all", help="List every mapped tensor, not the first and last few."),
    force: bool = typer.Option(False, "--force", help="Replace an existing OUT."),
):
    """Convert a checkpoint to timm's names (exact names, else by order and shape), refusing what does not line up."""
    from .weights import Norm, import_weights

    if (mean is None) != (std is None):
        raise CompError("give --mean and --std together, or neither")
    norm = Norm(_rgb("--mean", mean), _rgb("--std", std), "given with --mean/--std") if mean else None
    if norm is not None and min(norm.std) <= 0:
        raise CompError(f"--std {std}: every value must be above 0")
    r = import_weights(file, model, out, norm, force)
    t = Table(title=f"{file} → {r.out}", show_header=False)
    t.add_row("architecture", f"{r.architecture} ({r.num_classes} classes)")
    t.add_row("tensors", r.fit.describe(examples=0))
    t.add_row("normalisation", f"mean {list(r.norm.mean)} std {list(r.norm.std)} ({r.norm.source})")
    t.add_row("source sha256", r.sha256)
    console.print(t)
    if r.fit.mapping is not None:
        m = Table(title="mapped by order and shape (file → timm)")
        m.add_column("#", justify="right")
        m.add_column("in the file")
        m.add_column(f"in {r.architecture}")
        pairs = list(enumerate(r.fit.mapping, start=1))
        shown = pairs if all_ or len(pairs) <= 12 else pairs[:8] + [None] + pairs[-4:]
        for row in shown:
            if row is None:
                m.add_row("…", f"{len(pairs) - 12} more (--all lists them)", "")
            else:
                m.add_row(str(row[0]), row[1][1], row[1][0])
        console.print(m)
    console.print(f"wrote {r.out}; train with --set model.weights={r.out} --set model.name={r.architecture}")

# --------------------------------------------------------------------------------------------- sweep
sweep_app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False, invoke_without_command=True,
                        pretty_exceptions_show_locals=False, rich_markup_mode="rich",
                        help="Search any pipeline keys with Optuna (TPE + pruning), shared by several workers "
                             "through one database. [bold]comp sweep -p PIPELINE --space SPACE.yaml --data ROOT "
                             "--trials N[/] runs a worker (start the same command on every GPU or machine, with one "
                             "--storage: the first creates the study, the others join it); "
                             "[bold]comp sweep show STUDY[/] reports.")
app.add_typer(sweep_app, name="sweep")


def _fmt_param(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@sweep_app.callback()
def sweep_cmd(
    ctx: typer.Context,
    pipeline: Path = typer.Option(None, "--pipeline", "-p", help="YAML recipe every trial starts from."),
    space: Path = typer.Option(None, "--space", help="YAML: dotted key → {log|float|int|choice: ...} per searched key."),
    data: Path = typer.Option(None, "--data", help="Dataset root (overrides data.root; may differ per machine)."),
    trials: int = typer.Option(None, "--trials", help="Finished (complete or pruned) trials the study should hold; "
                                                      "0 only creates it."),
    storage: str = typer.Option(None, "--storage", help="Optuna database URL shared by the workers, e.g. "
                                                        "postgresql://user:pw@host/db (default: SQLite in the sweep folder)."),
    study: str = typer.Option(None, "--study", help="Study name (default: the pipeline's file name)."),
    out: Path = typer.Option(None, "--out", "-o", help="Sweep folder: trials/, plots, the default database "
                                                       "(default runs/sweeps/STUDY)."),
    timeout: float = typer.Option(None, "--timeout", help="Start no trial after this many seconds."),
    folds: str = typer.Option(None, "--folds", help="Folds each trial trains: K, a list like 0,2, or all (OOF F1); "
                                                    "default data.fold."),
    set_: list[str] = typer.Option(None, "--set", help="Fix a key for every trial: --set train.batch_size=32 (repeatable)."),
    pruner: str = typer.Option(None, "--pruner", help=f"{PRUNERS.choices} (default {KNOBS['pruner'][1]})."),
    prune_startup: int = typer.Option(None, "--prune-startup", help="median: finished trials before pruning starts "
                                                                    f"(default {KNOBS['prune_startup'][1]})."),
    prune_warmup: int = typer.Option(None, "--prune-warmup", help="No pruning before this epoch "
                                                                  f"(default {KNOBS['prune_warmup'][1]})."),
    heartbeat: int = typer.Option(None, "--heartbeat", help="Seconds between a trial's heartbeats; a trial silent for "
                                                            f"{GRACE_BEATS} is re-queued (default {DEFAULT_HEARTBEAT})."),
    keep: str = typer.Option(None, "--keep", help="best:K — afterwards, delete the checkpoints of all but the K best trials."),
):
    """Run a sweep worker: create the study (or join it) and run trials until it holds --trials finished ones."""
    if ctx.invoked_subcommand is not None:
        return
    from .sweep import run

    if trials is None:
        raise CompError("give --trials N: how many finished trials the study should hold (0: only create it)")
    r = run(pipeline, space, data, trials, storage, study, out, timeout, folds, list(set_ or []), keep,
            pruner=pruner, prune_startup=prune_startup, prune_warmup=prune_warmup, heartbeat=heartbeat)
    if trials == 0:
        console.print(f"sweep {r.name} is ready in {escape(r.url)}: start the workers (the same command with "
                      "--trials N, or --study/--storage/--data alone)", highlight=False)
        return
    counts = {s: sum(t.state.name.lower() == s for t in r.ran) for s in ("complete", "pruned", "fail")}
    console.print(f"sweep {r.name}: the study holds {r.finished} of {r.n_trials} finished trials"
                  f"{' (stopped at --timeout)' if r.stopped == 'timeout' else ''}; this worker ran {len(r.ran)} "
                  f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed)", highlight=False)
    if r.best is not None:
        console.print(f"best: trial {r.best.number}, F1 {r.best.value:.4f} → {r.best.user_attrs.get('run_dir', '')}",
                      highlight=False)
        console.print(f"  {escape(r.best.user_attrs.get('command', ''))}", highlight=False, soft_wrap=True)
    if r.thinned:
        console.print(f"--keep: deleted the checkpoints of {len(r.thinned)} trial run(s)")
    console.print(f"table and plots: comp sweep show {r.name}"
                  + (f" --storage {escape(r.url)}" if storage else "") + (f" --out {r.out}" if out else ""), highlight=False)


@sweep_app.command("show")
def sweep_show(
    study: str = typer.Argument(..., help="Study name."),
    storage: str = typer.Option(None, "--storage", help="Its database URL (default: SQLite in the sweep folder)."),
    out: Path = typer.Option(None, "--out", "-o", help="Sweep folder for the PNGs (default runs/sweeps/STUDY)."),
    keep: str = typer.Option(None, "--keep", help="best:K — delete the checkpoints of all but the K best trials."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write history.png, importances.png, parallel.png."),
):
    """The best trial and its exact `comp train` command, a table of trials, PNG plots (read-only: live workers go on)."""
    from .sweep import show

    r = show(study, storage, out, keep, plots)
    s = r.settings
    console.print(f"sweep {r.name} ({escape(r.url)}): pipeline {s.pipeline}, folds {s.folds or 'data.fold'}, "
                  f"pruner {s.pruner}" + (f", --set {' '.join(s.sets)}" if s.sets else ""), highlight=False)
    keys = list(s.space)
    short = {k: k.rsplit(".", 1)[-1] for k in keys}  # lr, preset, ... unless two keys share a last part
    short = {k: v if list(short.values()).count(v) == 1 else k for k, v in short.items()}
    t = Table(title=f"trials of {r.name}")
    for col in ("#", "state", "F1", "epochs", "min", "parameters", "note"):
        t.add_column(col, justify="right" if col in ("#", "F1", "epochs", "min") else "left",
                     no_wrap=col in ("state", "F1"))
    for row in r.rows:
        params = " ".join(f"{short[k]}={_fmt_param(row.params[k])}" for k in keys if k in row.params)
        t.add_row(str(row.number), row.state, "" if row.value is None else f"{row.value:.4f}", str(row.epochs),
                  f"{row.minutes:.1f}", escape(params), escape(row.note),
                  style="bold" if r.best is not None and row.number == r.best.number else None)
    console.print(t)
    if r.best is None:
        console.print("no complete trial yet")
    else:
        b = r.best
        console.print(f"best: trial {b.number}, F1 {b.value:.4f} → {b.user_attrs.get('run_dir', '')}", highlight=False)
        console.print(f"  {escape(b.user_attrs.get('command', ''))}", highlight=False, soft_wrap=True)
    if r.pngs:
        console.print(f"plots: {', '.join(str(p) for p in r.pngs)}", highlight=False)
    for line in r.skipped:
        console.print(f"[dim]not drawn: {escape(line)}[/]", highlight=False)
    if keep:
        console.print(f"--keep {keep}: deleted the checkpoints of {len(r.thinned)} trial run(s)")
    console.print(f"live view: {escape(r.dashboard)}", highlight=False)


# -------------------------------------------------------------------------------- explain & report
@app.command("explain")
def explain_cmd(
    run: Path = typer.Argument(..., help="Run folder from `comp train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the PNG grids."),
    data: Path = typer.Option(None, "--data", help="Dataset root (default: the run's data.root)."),
    eval_: bool = typer.Option(False, "--eval", help="Explain eval images (no truth) instead of validation ones."),
    images: list[Path] = typer.Option(None, "--images", help="Image file or folder to explain (repeatable)."),
    sample: int = typer.Option(16, "--sample", help="How many validation / eval images (a seeded sample)."),
    head: str = typer.Option(None, "--head", help="mask | gender | age: explain that head's decision (default: the class)."),
    layer: str = typer.Option(None, "--layer", help="Target layer as a dotted module name, e.g. layer4.1 (default: found)."),
    fold: int = typer.Option(None, "--fold", help="Which fold's model (default: the first trained)."),
    ckpt: str = typer.Option("best", "--ckpt", help="best | last checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty OUT."),
):
    """Grad-CAM overlays as PNG grids: where the model looks, with true and predicted labels per image."""
    from .explain import explain

    r = explain(run, out, data, images, eval_, sample, head, layer, fold, ckpt, seed, force)
    t = Table(title=f"Grad-CAM of {run.name} → {r.out}", show_header=False)
    t.add_row("images", f"{r.images} ({r.source})")
    t.add_row("decision", r.decision)
    t.add_row("target layer", r.layer)
    t.add_row("mistakes", f"{r.mistakes} of {r.known} with known truth" if r.known else "truth unknown")
    t.add_row("files", ", ".join(p.name for p in r.pngs))
    console.print(t)


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="Run folder from `comp train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for index.html and its PNGs."),
    submission: Path = typer.Option(None, "--submission", help="A submission CSV to score against the answer key."),
    truth: Path = typer.Option(None, "--truth", help="Answer key ImageID,ans,Usage (default: the submission's data root's)."),
    gallery: int = typer.Option(12, "--gallery", help="How many confident mistakes to show with Grad-CAM."),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty OUT."),
):
    """One self-contained HTML page: scores, curves, confusion matrices, F1 and counts per class, mistakes."""
    from .report import make_report

    r = make_report(run, out, submission, truth, gallery, force)
    t = Table(title=f"report of {run.name} → {r.html}", show_header=False)
    v = r.validation
    t.add_row("validation", f"F1 {v['f1']:.4f} (mask {v['f1_mask']:.3f} gender {v['f1_gender']:.3f} "
              f"age {v['f1_age']:.3f}) accuracy {v['acc']:.1%}")
    for part, s in r.submission.items():
        t.add_row(f"submission, {part}", f"F1 {s['f1']:.4f} accuracy {s['acc']:.1%} (n={s['n']})")
    t.add_row("sections", ", ".join(r.sections))
    t.add_row("mistakes shown", str(r.mistakes_shown))
    t.add_row("figures", f"{len(r.pngs)} PNGs in {r.out}")
    console.print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
