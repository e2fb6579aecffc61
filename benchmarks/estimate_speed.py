"""Seconds of `comp estimate` with a ledger, against the anchoring it had before (bisection over the whole θ
range, the posterior normalised in full at every step) and with the ledger's leave-one-out on one thread
instead of comp.selfcal.LOO_WORKERS, all timed in the same run on the same simulated ledger, with how far
their estimates differ. Then (`--part new-score`) the next estimate after a new score that displaces no
submission's references (below all of them): the leave-one-out made anew, as every new score cost before
the kept draws were cursed again for the new ledger (comp.loocache), against the kept one reused; and
(`--part week`) the same over a whole week: the ledger's CSVs scored one by one in a random order (singles,
then blends, as teams blend late), each estimated on the ledger so far before it is scored.

    python benchmarks/estimate_speed.py [--ledger 12] [--images 3500] [--refs 5] [--part all|anchoring|new-score|week]

Anchoring (solving each reference's weight so that its expected F1 matches its known score) is most of an
estimate's time, and the ledger's self-check runs an estimate per scored submission, twice (with the best
--refs references and with the best one). The ledger is a simulated leaderboard (benchmarks/estimator.py's
world: calibrated models of two families, their soft and vote blends), no data needed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).parent))
from estimator import simulated_pool  # noqa: E402  (the benchmark's world, not part of the package)

import comp.estimate as E  # noqa: E402
from comp.estimate import Reference, estimate_with_ledger  # noqa: E402
from comp.loocache import LooCache  # noqa: E402

LEDGER = [("a1", "A", 1.0, True), ("b1", "B", 0.9, True), ("a2", "A", 0.97, False), ("a3", "A", 0.94, True),
          ("b2", "B", 0.8, True), ("a4", "A", 0.9, True), ("b3", "B", 0.7, False), ("a5", "A", 0.86, False),
          ("b4", "B", 0.6, True), ("a6", "A", 0.8, True), ("soft:a1+b1", "", 0, True), ("vote:a1+a3+a4", "", 0, False),
          ("soft:a1+a3", "", 0, True), ("b5", "B", 0.5, True), ("vote:b1+b2+b4", "", 0, False), ("a7", "A", 0.7, True)]


def bisection_anchor(prior, refs, sources, new=None, new_ratio=1.0, rounds=4, new_theta=None):
    """The baseline: comp's anchoring before it used Brent's method and column sums (4 rounds always, 24
    halvings of the whole θ range per reference, q normalised in full for each expected F1)."""
    n = len(refs[0].sub)
    warnings = []
    for r in range(rounds):
        for j, (ref, src) in enumerate(zip(refs, sources, strict=True)):
            others = [s for k, s in enumerate(sources) if k != j] + ([new] if new is not None else [])
            base = np.log(prior) + sum((s.evidence() for s in others), np.zeros((n, E.N)))

            def gap(t, base=base, src=src, ref=ref):
                logq = base + src.evidence(t)
                q = np.exp(logq - logq.max(1, keepdims=True))
                return E.expected_f1(q / q.sum(1, keepdims=True), ref.sub.ans) - ref.f1

            lo, hi = E.THETA_RANGE[src.kind]
            f_lo, f_hi = gap(lo), gap(hi)
            if f_hi < 0 or f_lo > 0:
                src.theta = hi if f_hi < 0 else lo
                if r == rounds - 1:
                    warnings.append(f"{ref.name}: θ clamped")
            else:
                for _ in range(24):
                    mid = (lo + hi) / 2
                    lo, hi = (mid, hi) if gap(mid) < 0 else (lo, mid)
                src.theta = (lo + hi) / 2
            if new is not None:
                new.theta = new_theta if new_theta is not None else new_ratio * float(np.mean([s.theta for s in sources]))
    return warnings


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ledger", type=int, default=12, help=f"Scored submissions in the ledger (at most {len(LEDGER) - 1}).")
    ap.add_argument("--images", type=int, default=3500, help="Eval images (the competition's public + private).")
    ap.add_argument("--refs", type=int, default=5, help="References of the estimate (the ledger's best).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part", choices=("all", "anchoring", "new-score", "week"), default="all")
    args = ap.parse_args()
    console = Console()
    spec = LEDGER[:args.ledger + 1]
    subs, public_f1, _, prior = simulated_pool(spec, args.seed, args.images)
    names = sorted(subs, key=lambda n: -public_f1[n])
    new = names[len(names) // 2]  # a middling CSV: the usual NEW, neither a copy of the best nor far below
    ledger = [Reference(subs[n], public_f1[n], None, n) for n in names if n != new]
    refs = ledger[:args.refs]
    if args.part in ("all", "anchoring"):
        anchoring(subs[new], new, refs, ledger, prior, public_f1, args, console)
    if args.part in ("all", "new-score"):
        new_score(subs[new], new, ledger, prior, public_f1, args, console)
    if args.part in ("all", "week"):
        week(subs, public_f1, prior, args, console)


def anchoring(new_sub, new, refs, ledger, prior, public_f1, args, console):
    import comp.selfcal as S

    results = {}
    current, workers = E.anchor, S.LOO_WORKERS
    settings = (("before: bisection, full normalisation, 1 thread", bisection_anchor, 1),
                ("Brent, column sums, 1 thread", current, 1),
                (f"comp: Brent, column sums, {workers} threads", current, workers))
    for label, fn, threads in settings:
        E.anchor, S.LOO_WORKERS = fn, threads
        try:
            t = time.perf_counter()
            est = estimate_with_ledger(new_sub, refs, ledger, prior)
            results[label] = (time.perf_counter() - t, est)
        finally:
            E.anchor, S.LOO_WORKERS = current, workers
    (t0, e0), (t1, _), (t2, e2) = results.values()
    table = Table(title=f"comp estimate, one NEW ({new}) against a ledger of {len(ledger)} scored submissions, "
                        f"{args.images} eval images, best {args.refs} as references")
    for col in ("setting", "seconds", "estimate", "90 % interval"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for label, (t, e) in results.items():
        table.add_row(label, f"{t:.1f}", f"{e.f1:.5f}", f"{e.f1_interval[0]:.5f} – {e.f1_interval[1]:.5f}")
    console.print(table)
    moved = max(max(abs(e.f1 - e0.f1), *(abs(a - b) for a, b in zip(e.f1_interval, e0.f1_interval, strict=True)))
                for _, e in results.values())
    console.print(f"speed-up {t0 / t2:.2f}x in all (anchoring {t0 / t1:.2f}x, {workers} threads {t1 / t2:.2f}x; same run, "
                  f"same ledger); the estimate and its interval moved by at most {moved:.5f} (true public F1 "
                  f"{public_f1[new]:.4f})")



def new_score(new_sub, new, ledger, prior, public_f1, args, console):
    """The ledger less its weakest submission, estimated once (the kept leave-one-out); then that submission
    scored: the next estimate with nothing kept (what the old cache gave: every key held the ledger's scores)
    and with the kept estimates cursed again for the new scores."""
    weakest = ledger[-1]
    before, after = ledger[:-1], ledger
    with tempfile.TemporaryDirectory() as kept, tempfile.TemporaryDirectory() as empty:
        cache = LooCache(kept)
        estimate_with_ledger(new_sub, before[:args.refs], before, prior, cache=cache)
        cache.save()
        results = {}
        for label, folder in (("made anew (before: a new score changed every key)", empty),
                              ("kept estimates, cursed again for the new scores", kept)):
            cache = LooCache(folder)
            t = time.perf_counter()
            est = estimate_with_ledger(new_sub, after[:args.refs], after, prior, cache=cache)
            results[label] = (time.perf_counter() - t, est, cache.hits)
    table = Table(title=f"the next comp estimate of {new} after {weakest.name} (public F1 {weakest.f1:.4f}, below every "
                        f"other) is scored: a ledger of {len(after)}, {args.images} eval images")
    for col in ("leave-one-out", "seconds", "reused", "estimate", "90 % interval"):
        table.add_column(col, justify="left" if col == "leave-one-out" else "right")
    for label, (t, e, hits) in results.items():
        table.add_row(label, f"{t:.1f}", str(hits), f"{e.f1:.6f}", f"{e.f1_interval[0]:.6f} – {e.f1_interval[1]:.6f}")
    console.print(table)
    (t0, e0, _), (t1, e1, _) = results.values()
    same = (e0.f1, e0.f1_interval, e0.p_better) == (e1.f1, e1.f1_interval, e1.p_better)
    console.print(f"speed-up {t0 / t1:.2f}x (same run, same ledger); the estimates are "
                  f"{'identical' if same else 'DIFFERENT'} (true public F1 {public_f1[new]:.4f})")



def week(subs, public_f1, prior, args, console):
    """Each step: NEW estimated on the ledger so far (from 3 scored on), with the self-check kept in one folder
    across the week and with it made anew; then NEW is scored. Seconds summed over the week."""
    rng = np.random.default_rng(args.seed)
    singles, blends = [n for n in subs if ":" not in n], [n for n in subs if ":" in n]
    order = [str(n) for n in rng.permutation(singles)] + [str(n) for n in rng.permutation(blends)]
    kept_s = anew_s = 0.0
    reused = made = 0
    same = True
    with tempfile.TemporaryDirectory() as folder:
        for k in range(3, len(order)):
            ledger = sorted((Reference(subs[n], public_f1[n], None, n) for n in order[:k]), key=lambda r: -r.f1)
            timed = []
            for cache in (LooCache(folder), None):
                t = time.perf_counter()
                est = estimate_with_ledger(subs[order[k]], ledger[:args.refs], ledger, prior, cache=cache)
                timed.append((time.perf_counter() - t, est))
                if cache is not None:
                    cache.save()
                    reused += cache.hits
            (tk, ek), (ta, ea) = timed
            kept_s, anew_s = kept_s + tk, anew_s + ta
            made += 2 * k  # the leave-one-out: each scored CSV with the best n and with the best one
            same = same and (ek.f1, ek.f1_interval, ek.p_better) == (ea.f1, ea.f1_interval, ea.p_better)
    console.print(f"a week of {len(order)} CSVs ({len(order) - 3} estimates, ledgers of 3-{len(order) - 1}): "
                  f"{anew_s:.0f} s with the self-check made anew at each step, {kept_s:.0f} s with it kept "
                  f"({anew_s / kept_s:.2f}x, same run); {reused} of {made} leave-one-out estimates reused; the "
                  f"estimates are {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
