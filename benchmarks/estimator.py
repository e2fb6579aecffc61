"""How well `comp estimate` predicts a CSV's public leaderboard F1, against the 4th-place team's formula,
on real predictions: it plays the leaderboard.

    python benchmarks/estimator.py --data ../shared/datasets/utkmask [--work benchmarks/out/estimator]
                                   [--runs RUN ...] [--no-train]

Stage 1 (skipped for what exists): trains a handful of quick, different recipes on fold 0 of the data
(`RECIPES`, plus any --runs), predicts the eval set with each (best / last checkpoint × no TTA / flip TTA)
and blends them the ways a team does late in the week (soft / geometric means, votes of the best two and
three, `comp ensemble --fit` of runs with the same held-out images): at least 20 CSVs with probabilities,
scored against the answer key `eval_truth.csv` (the same scores as ../shared/lb/score.py).

Stage 2: for each CSV as "new", the best other CSV (then the best two, the best three) are the references
with their true public F1; the estimate is compared with the new CSV's true public F1. Printed in one run,
for comp with probabilities and run files, with probabilities but no run files, with CSVs only, for the
team's formula (which uses two scored submissions, like comp's "best 2")
F1_new ≈ F1_ref · agreement(new, ref) · c with c fitted on one other submission: mean and max absolute
error, the same over pairs agreeing on ≥ 80 % of images, 90 %-interval coverage, and decision accuracy
(does it call "beats the best reference" right, over pairs whose true gap exceeds 0.01). The last row is
the floor no estimator reaches: it knows every eval label and misses only which half is public (the best
reference's public score holds public-half luck that NEW shares only in part).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from comp import metrics
from comp.config import load_config
from comp.data.reader import read_truth
from comp.ensemble import blend_files, fit, held_out
from comp.estimate import Reference, calibration_for, estimate, train_prior
from comp.predict import predict
from comp.submission import Provenance, read_submission, score

# Quick recipes that differ in model, size, head and length: the spread of a week of submissions.
RECIPES = {
    "r10t_48_e4": ["model.name=resnet10t", "data.size=48x64", "train.epochs=4"],
    "r10t_64_e8": ["model.name=resnet10t", "data.size=64x85", "train.epochs=8"],
    "r10t_64_mt": ["model.name=resnet10t", "data.size=64x85", "train.epochs=8", "model.head=multitask"],
    "atto_64_e8": ["model.name=convnext_atto", "data.size=64x85", "train.epochs=8", "mixup.mixup_alpha=0.2"],
}
BASE = ["train.trackers=[]", "augment.preset=light", "loss.label_smoothing=0.1", "optim.lr=0.003",
        "train.batch_size=64"]


def make_csvs(data: Path, work: Path, extra_runs: list[Path], train: bool, console: Console,
              public_f1) -> list[Path]:
    run_dirs = list(extra_runs)
    for name, overrides in RECIPES.items():
        out = work / "runs" / name
        if not (out / "fold0" / "done").exists():
            if not train:
                continue
            from comp.train.engine import train as train_run

            cfg = load_config(None, BASE + overrides + [f"data.root={data}", f"name={name}",
                                                        f"data.cache_dir={work / 'cache'}"])
            console.print(f"training {name} ...")
            train_run(cfg, out, folds=[0], force=True)
        run_dirs.append(out)
    csvs = []
    for run in run_dirs:
        for ckpt in ("best", "last"):
            for tta in ("none", "flip"):
                path = work / "csv" / f"{run.name}-{ckpt}-{tta}.csv"
                if not path.is_file():
                    predict([run], path, data, tta, ckpt, force=True)
                csvs.append(path)

    def blend(name, inputs, method):
        path = work / "csv" / f"{name}.csv"
        if not path.is_file():
            blend_files(inputs, path, method=method, force=True)
        csvs.append(path)

    singles = [p for p in csvs if p.name.endswith("-best-flip.csv")]
    for i in range(len(singles) - 1):
        blend(f"soft-{singles[i].stem}+{singles[i + 1].stem}", singles[i:i + 2], "soft")
    # What a team submits late in the week: blends of its best singles (close to them, sometimes better).
    ranked = sorted(singles, key=public_f1, reverse=True)
    for k in (2, 3):
        if len(ranked) >= k:
            for method in ("soft", "geo", "vote", "per-task"):
                if k == 2 and method == "vote":
                    continue  # a two-way vote is the first input
                blend(f"{method}-best{k}", ranked[:k], method)
    if len(ranked) >= 4:
        blend("soft-all", ranked, "soft")
    # Fitted blends (`comp ensemble --fit`) of runs that held out the same images.
    groups: dict[tuple, list[Path]] = {}
    for run in run_dirs:
        groups.setdefault(tuple(held_out(run)["image"]), []).append(run)
    for group in (g for g in groups.values() if len(g) >= 2):
        path = work / "csv" / f"fit-{'+'.join(r.name for r in group)}.csv"
        if not path.is_file():
            fit(group, path, data, "flip", "best", force=True)
        csvs.append(path)
    return csvs


def team_formula(new, ref: Reference, other: Reference) -> float:
    """best_f1 · agreement(new, best) · c, with c fitted so the formula is right on one other submission."""
    c = other.f1 / (ref.f1 * float((other.sub.ans == ref.sub.ans).mean()))
    return ref.f1 * float((new.ans == ref.sub.ans).mean()) * c


def strip(sub):
    """What a user holding old submissions has: the CSV alone."""
    return replace(sub, probs=None, prov=Provenance())


ORACLE = "oracle: all labels known"


def play(subs: dict, truth_f1: dict, full_f1: dict, prior, samples: int) -> dict[str, list[dict]]:
    names = sorted(subs, key=lambda n: -truth_f1[n])
    rows = {"comp": [], "comp, CSV + probs": [], "comp, CSVs only": [], "team formula": [], ORACLE: []}
    cal = {n: calibration_for(subs[n]) for n in names}
    for new in names:
        others = [n for n in names if n != new]
        for k in (1, 2, 3):
            refs = others[:k]
            truth = truth_f1[new]
            agree = float((subs[new].ans == subs[refs[0]].ans).mean())
            gap = truth - truth_f1[refs[0]]
            base = {"new": new, "k": k, "truth": truth, "agree": agree, "gap": gap}
            for mode in ("comp", "comp, CSV + probs", "comp, CSVs only"):
                s = {"comp": lambda x: x, "comp, CSV + probs": lambda x: replace(x, prov=Provenance()),
                     "comp, CSVs only": strip}[mode]
                runs = mode == "comp"
                ref_objs = [Reference(s(subs[r]), truth_f1[r], None, r) for r in refs]
                e = estimate(s(subs[new]), ref_objs, prior, cal[new] if runs else None, samples,
                             ref_calibrations=[cal[r] for r in refs] if runs else None)
                rows[mode].append(base | {"est": e.f1, "lo": e.f1_interval[0], "hi": e.f1_interval[1],
                                          "beats": e.p_better > 0.5})
            if k == 1:
                other = others[1]
                est = team_formula(subs[new], Reference(subs[refs[0]], truth_f1[refs[0]]),
                                   Reference(subs[other], truth_f1[other]))
                rows["team formula"].append(base | {"est": est, "lo": np.nan, "hi": np.nan,
                                                    "beats": est > truth_f1[refs[0]]})
                # The floor: every eval label known, only which half is public is not; the best ref's known
                # public score plus the difference on all images.
                est = truth_f1[refs[0]] + full_f1[new] - full_f1[refs[0]]
                rows[ORACLE].append(base | {"est": est, "lo": np.nan, "hi": np.nan, "beats": est > truth_f1[refs[0]]})
    return rows


def summarize(rows: list[dict]) -> dict:
    err = np.array([r["est"] - r["truth"] for r in rows])
    close = np.array([r["agree"] >= 0.8 for r in rows])
    decided = [r for r in rows if abs(r["gap"]) > 0.01]
    cover = [r["lo"] <= r["truth"] <= r["hi"] for r in rows if not np.isnan(r["lo"])]
    return {"pairs": len(rows), "mae": np.abs(err).mean(), "max": np.abs(err).max(), "bias": err.mean(),
            "close": int(close.sum()), "mae_close": np.abs(err[close]).mean() if close.any() else np.nan,
            "max_close": np.abs(err[close]).max() if close.any() else np.nan,
            "coverage": np.mean(cover) if cover else np.nan,
            "decision": np.mean([r["beats"] == (r["gap"] > 0) for r in decided]) if decided else np.nan,
            "decided": len(decided)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/utkmask"))
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/estimator"))
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="More finished run folders to predict with.")
    ap.add_argument("--no-train", action="store_true", help="Use only the runs that exist.")
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    console = Console(width=200)
    truth = read_truth(args.data / "eval_truth.csv")

    def public_f1(path):
        sub = read_submission(path)
        return score(sub.ids, sub.ans, truth)["public"]["f1"]

    csvs = make_csvs(args.data, args.work, args.runs, not args.no_train, console, public_f1)
    subs, seen = {}, set()
    for p in csvs:  # identical answers (best == last checkpoint, say) are one submission, not two
        sub = read_submission(p)
        if (key := sub.ans.tobytes()) not in seen:
            seen.add(key)
            subs[p.stem] = sub
    truth_f1 = {n: score(s.ids, s.ans, truth)["public"]["f1"] for n, s in subs.items()}
    key = truth.set_index("ImageID")["ans"]
    full_f1 = {n: metrics.macro_f1(key.loc[list(s.ids)].to_numpy(), s.ans) for n, s in subs.items()}
    f1s = np.array(list(truth_f1.values()))
    console.print(f"{len(subs)} CSVs, public F1 {f1s.min():.3f}–{f1s.max():.3f}")
    t = time.time()
    results = play(subs, truth_f1, full_f1, train_prior(args.data), args.samples)
    import pandas as pd  # every estimate, for a closer look

    pd.DataFrame([r | {"method": m} for m, rows in results.items() for r in rows]).to_csv(
        args.work / "estimates.csv", index=False)
    table = Table(title=f"estimating public macro F1 of {len(subs)} real CSVs ({time.time() - t:.0f}s)")
    for col in ("method", "refs", "pairs", "MAE", "max err", "bias", "MAE agree≥80%", "max agree≥80%",
                "90% coverage", "decision acc"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for mode, rows in results.items():
        for k in (1, 2, 3):
            sel = [r for r in rows if r["k"] == k]
            if not sel:
                continue
            s = summarize(sel)
            table.add_row(mode, "best" if k == 1 else f"best {k}", str(s["pairs"]), f"{s['mae']:.4f}", f"{s['max']:.4f}",
                          f"{s['bias']:+.4f}", f"{s['mae_close']:.4f} (n={s['close']})", f"{s['max_close']:.4f}",
                          "" if np.isnan(s["coverage"]) else f"{s['coverage']:.0%}",
                          f"{s['decision']:.0%} (n={s['decided']})")
    console.print(table)


if __name__ == "__main__":
    main()
