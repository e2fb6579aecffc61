"""How well `comp estimate` predicts a CSV's public leaderboard F1, against the 4th-place team's formula,
on three pools of real predictions it must not flatter: it plays the leaderboard.

    python benchmarks/estimator.py --data ../shared/datasets/utkmask [--work benchmarks/out/estimator]
        [--runs RUN ...] [--strong RUN ...] [--foreign DIR] [--no-train] [--pools comp,strong,foreign]
        [--protocols play,decide,week] [--orders 4]
    python benchmarks/estimator.py --summarize WORK/estimates-comp.csv OTHER/estimates-strong.csv ...
        (the tables again, and the mean over pools played in separate runs)

Pools (each scored against the answer key `eval_truth.csv`, the same scores as ../shared/lb/score.py):
- comp:    comp's own quick recipes (`RECIPES`, trained on fold 0 unless --no-train) and any --runs, each
           predicted best / last checkpoint x no / flip TTA, and the blends a team submits late in the week
           (soft / geo / vote / per-task of the best singles, `comp ensemble --fit`).
- strong:  fine-tuned pretrained models (--strong: e.g. cpu_pretrained.yaml runs at several sizes, epochs,
           folds), the same four CSVs per run and their blends: close variants, pairs agreeing 80-95 %.
- foreign: CSVs made without comp (--foreign: a folder of CSVs, with NAME.probs.npy where the maker had
           probabilities; benchmarks/foreign_pool.py makes one with a plain torch loop and scikit-learn).
- sim:     three simulated leaderboards (SIM_POOLS, --seed; no data needed): CSVs of calibrated models of two
           families drawn from a known world, in regimes the real pools seldom hold: a week of near-best
           CSVs, a wide spread of strengths, one CSV far better than the rest. No CSV has a labelled twin, so
           they test comp where it knows least (CSVs alone).

Each CSV of a pool is NEW once, with the other CSVs of its pool as what the team has already scored:
- 1 ref:   the best other CSV alone (no ledger); `+ self-check`: the others also form the ledger, so the
           leave-one-out correction and the winner's curse apply;
- 2 refs:  the best two others, no ledger: the two scores the formula's "1 ref" row uses (its c comes from
           the second), so comp and the formula compared on the same information;
- best 3:  the best three others, with the ledger's self-check;
- ledger:  every other scored CSV known (`comp estimate` in ledger mode: the best 5 as references, the
           self-check and winner's curse from all of them).
The decide protocol (`--protocols decide`) asks what a team asks before spending a slot, "does NEW beat REF?",
of close calls: each CSV against the closest CSV it beats and the closest it trails by >= 0.005 (against the
best other only the pool's top CSV can beat it, one case per pool), with no ledger, and once more with every
other CSV in the ledger (`comp estimate NEW --ref REF` where a team has scored them); comp's 1-ref rows are
also split by what measured NEW (held-out twins on the same images, on other images, or CSVs alone).
The week protocol (`--protocols week`, `--orders K`) replays the week as a team lives it: the pool's CSVs in K
random orders (singles first, then blends), each estimated as `comp estimate NEW` on the ledger of the CSVs
before it, against the best so far; there new records are common and the first ledgers are small.
Ledger mode: the best 5 as references, or the best one alone where the ledger's leave-one-out says it did better.
The team formula F1_new ~ F1_best . agreement(new, best) . c has c from the 2nd best (1 ref) or from every
other CSV (ledger). Columns: MAE, bias, worst error, MAE over pairs agreeing >= 80 %, 90 %-interval
coverage and the mean half-width it took (coverage bought with width shows), and decision accuracy on
"does NEW beat the best?" for NEWs that beat it by >= 0.005 and for those that trail it by >= 0.005,
separately. The oracle row knows every eval label and misses only which half is
public: the floor. Leave-one-out estimates are memoised per (CSV, references) within a pool, so the
winner's-curse pool of a memoised one may hold the current NEW's score too (one score of many).
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from comp import metrics, runs
from comp.blend import combine
from comp.config import load_config
from comp.data.reader import read_truth
from comp.ensemble import blend_files, fit, held_out
from comp.estimate import Reference, estimate_with_ledger, train_prior
from comp.predict import predict
from comp.selfcal import formula
from comp.submission import read_submission, score

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
              public_f1, recipes: dict = RECIPES) -> list[Path]:
    run_dirs = list(extra_runs)
    for name, overrides in recipes.items():
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
        for ckpt in ("best",) if runs.is_full(run) else ("best", "last"):  # a refit's model is its last epoch
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
    for run in (r for r in run_dirs if not runs.is_full(r)):  # a refit on every person held nobody out
        groups.setdefault(tuple(held_out(run)["image"]), []).append(run)
    for group in (g for g in groups.values() if len(g) >= 2):
        path = work / "csv" / f"fit-{'+'.join(r.name for r in group)}.csv"
        if not path.is_file():
            fit(group, path, data, "flip", "best", force=True)
        csvs.append(path)
    return csvs


# Simulated leaderboards: CSVs drawn from a known world, made by no training code at all, in regimes the real
# pools seldom hold (NEW far better or far worse than the scored CSVs, two model families, blends of relatives).
# Each model's class scores are one family's shared noise plus its own plus `strength` on the true class, and its
# probabilities the Bayes posterior of them (calibrated); CSVs alone: nothing measures NEW. (name, family, strength
# as a share of the best's, probabilities?) per CSV; "soft:a+b" / "vote:a+b+c" blend earlier ones.
SIM_POOLS = {
    "sim-week": [("a1", "A", 1.0, True), ("a2", "A", 0.97, False), ("a3", "A", 0.94, True), ("a4", "A", 0.9, True),
                 ("a5", "A", 0.86, False), ("a6", "A", 0.8, True), ("soft:a1+a3", "", 0, True), ("vote:a1+a3+a4", "", 0, False)],
    "sim-spread": [("a1", "A", 1.0, True), ("b1", "B", 0.9, True), ("a2", "A", 0.8, False), ("b2", "B", 0.7, True),
                   ("a3", "A", 0.6, True), ("b3", "B", 0.5, False), ("soft:a1+b1", "", 0, True)],
    "sim-breakthrough": [("b1", "B", 1.0, True), ("b2", "B", 0.8, False), ("a1", "A", 0.62, True), ("a2", "A", 0.6, False),
                         ("a3", "A", 0.58, True), ("a4", "A", 0.55, True), ("vote:a1+a2+a3", "", 0, False)],
}
SIM_STRENGTH = 2.2  # the best model's: public F1 about 0.55-0.65 in this world, as on the real leaderboard
SIM_SHARED = 0.85  # the share of a model's noise its family has in common: one family's CSVs agree 70-90 %


def simulated_pool(spec: list[tuple], seed: int = 0, n: int = 3000):
    """(subs, public F1, F1 on all images, class prior) of one simulated leaderboard."""
    from comp.data import labels as L
    from comp.submission import Submission

    rng = np.random.default_rng(seed)
    heads = L.decode_heads(np.arange(L.N_CLASSES))  # a competition's shares: most wear masks, few are 60+
    prior = np.array([5 / 7, 1 / 7, 1 / 7])[heads["mask"]] * np.array([0.4, 0.6])[heads["gender"]] * \
        np.array([0.47, 0.43, 0.10])[heads["age"]]
    y = rng.choice(L.N_CLASSES, n, p=prior)
    public = rng.random(n) < 0.5
    family = {f: rng.normal(0, 1, (n, L.N_CLASSES)) for f in "AB"}
    ids = np.array([f"s{k:05d}" for k in range(n)], dtype=object)
    made, subs = {}, {}
    for name, fam, share, with_probs in spec:
        if ":" in name:
            how, parts = name.split(":")
            inputs = [made[x] for x in parts.split("+")]
            ans, p = combine(how, np.stack([q.argmax(1) for q in inputs]), np.stack(inputs))
            p = np.mean(inputs, 0) if p is None else p  # a vote has none; its inputs' mean, should one be blended on
        else:
            strength = SIM_STRENGTH * share
            signal = np.sqrt(SIM_SHARED) * family[fam] + np.sqrt(1 - SIM_SHARED) * rng.normal(0, 1, (n, L.N_CLASSES))
            signal[np.arange(n), y] += strength
            logp = np.log(prior) + strength * signal  # the Bayes posterior of a Gaussian score: calibrated
            p = np.exp(logp - logp.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            ans = p.argmax(1)
        made[name] = p
        subs[name] = Submission(Path(f"{name}.csv"), ids, ans.astype(np.int64), p.astype(np.float32) if with_probs else None)
    truth_f1 = {k: metrics.macro_f1(y[public], s.ans[public]) for k, s in subs.items()}
    full_f1 = {k: metrics.macro_f1(y, s.ans) for k, s in subs.items()}
    return subs, truth_f1, full_f1, prior


ORACLE = "oracle: all labels known"
TWO_REFS = "comp, 2 refs (the formula's 1-ref scores)"
MODES = ["comp, 1 ref", TWO_REFS, "comp, 1 ref + self-check", "comp, best 3 + self-check", "comp, ledger",
         "team formula, 1 ref", "team formula, ledger", ORACLE]


def play(subs: dict, truth_f1: dict, full_f1: dict, prior, samples: int, console: Console) -> dict[str, list[dict]]:
    names = sorted(subs, key=lambda n: -truth_f1[n])
    refs = {n: Reference(subs[n], truth_f1[n], None, n) for n in names}
    rows = {m: [] for m in MODES}
    memo, twins = {}, {}
    for i, new in enumerate(names):
        others = [refs[n] for n in names if n != new]
        best = others[0]
        truth = truth_f1[new]
        base = {"new": new, "truth": truth, "agree": float((subs[new].ans == best.sub.ans).mean()),
                "gap": truth - best.f1}

        def add(mode, est, lo=np.nan, hi=np.nan, p_better=None, base=base, best=best):
            rows[mode].append(base | {"est": est, "lo": lo, "hi": hi,
                                      "beats": (est > best.f1) if p_better is None else p_better > 0.5})

        for mode, use, ledger in (("comp, 1 ref", others[:1], []), (TWO_REFS, others[:2], []),
                                  ("comp, 1 ref + self-check", others[:1], others),
                                  ("comp, best 3 + self-check", others[:3], others), ("comp, ledger", others, others)):
            e = estimate_with_ledger(subs[new], use, ledger, prior, samples, memo=memo, twins=twins)
            add(mode, e.f1, *e.f1_interval, e.p_better)
        add("team formula, 1 ref", formula(subs[new].ans, others[:2]))
        add("team formula, ledger", formula(subs[new].ans, others))
        add(ORACLE, best.f1 + full_f1[new] - full_f1[best.name])
        console.print(f"  {i + 1}/{len(names)} {new}: true {truth:.4f}, comp ledger "
                      f"{rows['comp, ledger'][-1]['est']:.4f}, formula {rows['team formula, ledger'][-1]['est']:.4f}")
    return rows


DECIDE = ["comp, 1 ref", "comp, 2 refs", "comp, 1 ref + self-check", "team formula (the same 2 scores)", ORACLE]


def decisions(subs: dict, truth_f1: dict, full_f1: dict, prior, samples: int, console: Console,
              margin: float = 0.005) -> dict:
    """The call a team makes before spending a slot: "does NEW beat REF?". Against the pool's best other only
    the pool's top CSV can beat it, so that protocol has one "beats" case per pool; here each NEW meets the
    closest CSV it beats and the closest it trails (public F1 apart by >= `margin` either way), as REF with no
    ledger. "2 refs" and the formula also know the best remaining CSV's score (the formula's c); "+ self-check"
    is `comp estimate NEW --ref REF` as a team runs it, with every other CSV of the pool in its ledger."""
    names = sorted(subs, key=lambda n: -truth_f1[n])
    rows = {m: [] for m in DECIDE}
    memo, twins = {}, {}
    for new in names:
        gaps = {r: truth_f1[new] - truth_f1[r] for r in names if r != new}
        beaten = [r for r, g in gaps.items() if g >= margin]
        ahead = [r for r, g in gaps.items() if g <= -margin]
        picks = ([min(beaten, key=gaps.get)] if beaten else []) + ([max(ahead, key=gaps.get)] if ahead else [])
        for r in picks:
            ref = Reference(subs[r], truth_f1[r], None, r)
            second = next(n for n in names if n not in (new, r))
            refs2 = [ref, Reference(subs[second], truth_f1[second], None, second)]
            base = {"new": new, "ref": r, "truth": truth_f1[new], "gap": gaps[r],
                    "agree": float((subs[new].ans == subs[r].ans).mean())}
            ledger = [Reference(subs[n], truth_f1[n], None, n) for n in names if n != new]
            ests = [estimate_with_ledger(subs[new], use, led, prior, samples, memo=memo, twins=twins)
                    for use, led in (([ref], []), (refs2, []), ([ref], ledger))]
            values = [e.f1 for e in ests] + [formula(subs[new].ans, refs2), truth_f1[r] + full_f1[new] - full_f1[r]]
            for mode, est in zip(DECIDE, values, strict=True):
                rows[mode].append(base | {"est": est, "says_beats": est > truth_f1[r], "basis": ests[0].measured_by})
        console.print(f"  decisions {new}: {len(picks)} pairs")
    return rows


WEEK = ["comp estimate (the ledger so far)", "comp, the best so far alone", "team formula (the ledger so far)", ORACLE]
BLENDS = ("soft", "geo", "vote", "per", "fit")  # the pools' blend names: soft-..., per-task-..., soft:a1+b1, ...


def is_blend(name: str) -> bool:
    return name.split(":")[0].split("-")[0] in BLENDS


def week(subs: dict, truth_f1: dict, full_f1: dict, prior, samples: int, console: Console, orders: int = 4,
         seed: int = 0, margin: float = 0.005) -> dict:
    """The week as a team lives it: the pool's CSVs come in a random order (its singles first, then its blends,
    as a team blends late), and each is estimated before it is submitted, as `comp estimate NEW` on the ledger
    of the CSVs scored before it, against the best so far. Unlike play and decide, NEWs that beat the best so
    far are common here (each new record), and so is a ledger too small for the self-check (the first steps).
    `orders` random orders per pool; leave-one-out estimates are memoised per (CSV, references) across steps and
    orders, so one keeps the winner's-curse correction of the ledger it was first made on: on foreign pool II
    (8 orders) the estimates made without that memo differ by 0.0002 on average, 0.0027 at most, with the same
    MAE, coverage and calls, at 2.6x the time."""
    rng = np.random.default_rng(seed)
    refs = {n: Reference(subs[n], truth_f1[n], None, n) for n in subs}
    singles, blends = sorted(n for n in subs if not is_blend(n)), sorted(n for n in subs if is_blend(n))
    rows = {m: [] for m in WEEK}
    memo, twins = {}, {}
    for o in range(orders):
        order = [str(n) for n in rng.permutation(singles)] + [str(n) for n in rng.permutation(blends)]
        for k in range(1, len(order)):
            new = order[k]
            ledger = sorted((refs[n] for n in order[:k]), key=lambda r: -r.f1)
            best = ledger[0]
            base = {"order": o, "step": k, "new": new, "truth": truth_f1[new], "best": best.name,
                    "gap": truth_f1[new] - best.f1, "agree": float((subs[new].ans == best.sub.ans).mean())}
            e = estimate_with_ledger(subs[new], ledger, ledger, prior, samples, memo=memo, twins=twins)
            e1 = estimate_with_ledger(subs[new], ledger[:1], [], prior, samples, memo=memo, twins=twins)
            for mode, est in zip(WEEK[:2], (e, e1), strict=True):
                rows[mode].append(base | {"est": est.f1, "lo": est.f1_interval[0], "hi": est.f1_interval[1],
                                          "p_beats": est.p_better, "says_beats": est.p_better > 0.5})
            for mode, est in zip(WEEK[2:], (formula(subs[new].ans, ledger), best.f1 + full_f1[new] - full_f1[best.name]),
                                 strict=True):
                rows[mode].append(base | {"est": est, "lo": np.nan, "hi": np.nan, "p_beats": np.nan,
                                          "says_beats": est > best.f1})
        console.print(f"  week, order {o + 1}/{orders}: {len(order) - 1} steps, "
                      f"{sum(r['gap'] >= margin for r in rows[WEEK[0]] if r['order'] == o)} new records")
    return rows


def week_table(title: str, rows: dict, margin: float = 0.005) -> Table:
    t = Table(title=title)
    for col in ("method", "steps", "MAE", "bias", "90% coverage", f"NEW beats the best by ≥ {margin}: says beats",
                f"NEW trails it by ≥ {margin}: says not", "Brier of P(beats)"):
        t.add_column(col, justify="left" if col == "method" else "right")
    cell = lambda v: f"{np.mean(v):.0%} (n={len(v)})" if v else "—"  # noqa: E731
    for mode, rs in rows.items():
        for part, sel in (("", rs), ("  ledger of 1-2 (no self-check)", [r for r in rs if r["step"] < 3]),
                          ("  ledger of 3 or more", [r for r in rs if r["step"] >= 3])):
            if not sel:
                continue
            err = np.array([r["est"] - r["truth"] for r in sel])
            cover = [r["lo"] <= r["truth"] <= r["hi"] for r in sel if not np.isnan(r["lo"])]
            up = [r["says_beats"] for r in sel if r["gap"] >= margin]
            down = [not r["says_beats"] for r in sel if r["gap"] <= -margin]
            brier = [(r["p_beats"] - (r["gap"] > 0)) ** 2 for r in sel if not np.isnan(r["p_beats"])]
            t.add_row(part or mode, str(len(sel)), f"{np.abs(err).mean():.4f}", f"{err.mean():+.4f}",
                      f"{np.mean(cover):.0%}" if cover else "—", cell(up), cell(down),
                      f"{np.mean(brier):.3f}" if brier else "—")
    return t


def decision_table(title: str, rows: dict) -> Table:
    t = Table(title=title)
    for col in ("method", "NEW beats REF: says beats (n)", "NEW trails REF: says not (n)", "all (n)"):
        t.add_column(col, justify="left" if col == "method" else "right")
    cell = lambda v: f"{np.mean(v):.0%} (n={len(v)})" if v else "—"  # noqa: E731
    for mode, rs in rows.items():
        for basis in [None] + (sorted({r["basis"] for r in rs}) if mode == DECIDE[0] else []):
            sel = [r for r in rs if basis is None or r["basis"] == basis]
            up = [r["says_beats"] for r in sel if r["gap"] > 0]
            down = [not r["says_beats"] for r in sel if r["gap"] < 0]
            t.add_row(mode if basis is None else f"  of which NEW measured by {basis}", cell(up), cell(down),
                      cell(up + down))
    return t


def summarize(rows: list[dict]) -> dict:
    err = np.array([r["est"] - r["truth"] for r in rows])
    close = np.array([r["agree"] >= 0.8 for r in rows])
    up = [r for r in rows if r["gap"] >= 0.005]
    down = [r for r in rows if r["gap"] <= -0.005]
    cover = [r["lo"] <= r["truth"] <= r["hi"] for r in rows if not np.isnan(r["lo"])]
    half = [(r["hi"] - r["lo"]) / 2 for r in rows if not np.isnan(r["lo"])]
    return {"pairs": len(rows), "mae": np.abs(err).mean(), "max": np.abs(err).max(), "bias": err.mean(),
            "close": int(close.sum()), "mae_close": np.abs(err[close]).mean() if close.any() else np.nan,
            "coverage": np.mean(cover) if cover else np.nan, "half": np.mean(half) if half else np.nan,
            "up": np.mean([r["beats"] for r in up]) if up else np.nan, "n_up": len(up),
            "down": np.mean([not r["beats"] for r in down]) if down else np.nan, "n_down": len(down)}


COLUMNS = ("method", "pairs", "MAE", "bias", "worst", "MAE agree≥80%", "90% coverage", "mean half-width", "says beats (NEW ≥ best+.005)",
           "says not (NEW ≤ best−.005)")


def table(title: str, summaries: dict[str, dict]) -> Table:
    t = Table(title=title)
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "method" else "right")
    pct = lambda v, n: "—" if np.isnan(v) else f"{v:.0%} (n={n})"  # noqa: E731
    for mode, s in summaries.items():
        t.add_row(mode, str(s["pairs"]), f"{s['mae']:.4f}", f"{s['bias']:+.4f}", f"{s['max']:.4f}",
                  "—" if np.isnan(s["mae_close"]) else f"{s['mae_close']:.4f} (n={s['close']})",
                  "" if np.isnan(s["coverage"]) else f"{s['coverage']:.0%}",
                  "" if np.isnan(s["half"]) else f"{s['half']:.4f}", pct(s["up"], s["n_up"]),
                  pct(s["down"], s["n_down"]))
    return t


def load_pool(csvs: list[Path], truth) -> tuple[dict, dict, dict]:
    subs, seen = {}, {}
    for p in csvs:  # identical answers (best == last checkpoint, say) are one submission, not two: the first,
        sub = read_submission(p)  # or the first with probabilities (a team holding both estimates with them)
        key = sub.ans.tobytes()
        if key not in seen or (sub.probs is not None and subs[seen[key]].probs is None):
            if key in seen:
                del subs[seen[key]]
            seen[key] = p.stem
            subs[p.stem] = sub
    truth_f1 = {n: score(s.ids, s.ans, truth)["public"]["f1"] for n, s in subs.items()}
    key = truth.set_index("ImageID")["ans"]
    full_f1 = {n: metrics.macro_f1(key.loc[list(s.ids)].to_numpy(), s.ans) for n, s in subs.items()}
    return subs, truth_f1, full_f1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/datasets/utkmask"))
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/estimator"))
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="More finished comp runs for the comp pool.")
    ap.add_argument("--strong", type=Path, nargs="*", default=[], help="Fine-tuned pretrained runs: the strong pool.")
    ap.add_argument("--foreign", type=Path, help="A folder of CSVs made without comp: the foreign pool.")
    ap.add_argument("--no-train", action="store_true", help="Use only the runs that exist.")
    ap.add_argument("--pools", default="comp,strong,foreign,sim")
    ap.add_argument("--seed", type=int, default=0, help="The simulated pools' world.")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="Which quick recipes to train for the comp pool.")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--prior", choices=["train", "refs"], default="train", help="The class prior: the train set's "
                    "shares (the simulated world's), or the references' predicted shares, as comp estimate uses when it "
                    "finds no train set.")
    ap.add_argument("--protocols", default="play,decide", help="play: each CSV against the best others; decide: "
                    "each CSV against the closest CSV it beats and the closest it trails; week: each CSV, in random "
                    "orders, against the ledger of those before it.")
    ap.add_argument("--orders", type=int, default=4, help="week: random orders of each pool's CSVs.")
    ap.add_argument("--summarize", type=Path, nargs="+", help="Only print the tables of saved estimates-POOL.csv files.")
    args = ap.parse_args()
    console = Console(width=220)
    if args.summarize:
        return summarize_files(args.summarize, console)
    wanted = args.pools.split(",")
    truth = read_truth(args.data / "eval_truth.csv") if {"comp", "strong", "foreign"} & set(wanted) else None

    def public_f1(path):
        sub = read_submission(path)
        return score(sub.ids, sub.ans, truth)["public"]["f1"]

    pools = {}
    if "comp" in wanted:
        recipes = {k: RECIPES[k] for k in args.recipes.split(",") if k}
        pools["comp"] = make_csvs(args.data, args.work / "comp", args.runs, not args.no_train, console, public_f1,
                                  recipes)
    if "strong" in wanted and args.strong:
        pools["strong"] = make_csvs(args.data, args.work / "strong", args.strong, False, console, public_f1, recipes={})
    if "foreign" in wanted and args.foreign:
        pools["foreign"] = sorted(args.foreign.glob("*.csv"))
    train_shares = train_prior(args.data)  # the real pools' class prior; a simulated pool brings its world's
    played = {name: (*load_pool(csvs, truth), train_shares) for name, csvs in pools.items()}
    if "sim" in wanted:
        played |= {name: simulated_pool(spec, args.seed) for name, spec in SIM_POOLS.items()}
    if args.prior == "refs":  # what comp falls back on when it finds no train set
        played = {name: (*pool[:3], None) for name, pool in played.items()}
    per_pool = {}
    for name, (subs, truth_f1, full_f1, prior) in played.items():
        f1s = np.array(list(truth_f1.values()))
        console.print(f"[bold]{name} pool[/]: {len(subs)} distinct CSVs, public F1 {f1s.min():.3f}–{f1s.max():.3f}")
        import pandas as pd  # every estimate, for a closer look

        args.work.mkdir(parents=True, exist_ok=True)
        def save(rows, what, name=name):
            pd.DataFrame([r | {"method": m} for m, rs in rows.items() for r in rs]).to_csv(
                args.work / f"{what}-{name}.csv", index=False)

        t = time.time()
        if "play" in args.protocols.split(","):
            rows = play(subs, truth_f1, full_f1, prior, args.samples, console)
            save(rows, "estimates")
            per_pool[name] = {m: summarize(rs) for m, rs in rows.items()}
            console.print(table(f"{name} pool: {len(subs)} CSVs, public F1 {f1s.min():.3f}–{f1s.max():.3f} "
                                f"({time.time() - t:.0f}s)", per_pool[name]))
        if "week" in args.protocols.split(","):
            t = time.time()
            rows = week(subs, truth_f1, full_f1, prior, args.samples, console, args.orders, args.seed)
            save(rows, "week")
            console.print(week_table(f"{name} pool: a week replayed ({args.orders} random orders, each CSV against "
                                     f"the ledger before it; {time.time() - t:.0f}s)", rows))
        if "decide" in args.protocols.split(","):
            t = time.time()
            rows = decisions(subs, truth_f1, full_f1, prior, args.samples, console)
            save(rows, "decisions")
            console.print(decision_table(f"{name} pool: does NEW beat REF? (closest pairs >= 0.005 apart, no "
                                         f"ledger; {time.time() - t:.0f}s)", rows))
    print_mean(per_pool, console)


def print_mean(per_pool: dict[str, dict], console: Console) -> None:
    if len(per_pool) > 1:
        with warnings.catch_warnings():  # a column no pool has (no NEW beats its best anywhere) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            modes = [m for m in MODES if all(m in pool for pool in per_pool.values())]
            mean = {m: {k: float(np.nanmean([per_pool[p][m][k] for p in per_pool]))
                        for k in per_pool[next(iter(per_pool))][m]} for m in modes}
        for m in mean.values():
            for k in ("pairs", "close", "n_up", "n_down"):
                m[k] = int(round(m[k] * len(per_pool)))  # totals over the pools
        console.print(table(f"mean over the {len(per_pool)} pools ({', '.join(per_pool)}); n = totals", mean))


def summarize_files(paths: list[Path], console: Console) -> None:
    """The tables again from saved `estimates-POOL.csv` files (pools played in separate runs included)."""
    import pandas as pd

    per_pool = {}
    for path in paths:
        df = pd.read_csv(path)
        rows = {m: df[df["method"] == m].drop(columns="method").to_dict("records") for m in MODES}
        name = path.stem.removeprefix("estimates-")
        per_pool[name] = {m: summarize(rs) for m, rs in rows.items() if rs}  # files from before a mode existed
        console.print(table(f"{name} pool: {len(rows[MODES[0]])} CSVs ({path})", per_pool[name]))
    print_mean(per_pool, console)


if __name__ == "__main__":
    main()
