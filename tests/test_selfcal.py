"""comp estimate's self-calibration on the ledger (leave-one-out) and its winner's-curse correction."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from comp import metrics
from comp.cli import app
from comp.estimate import Estimate, Reference, estimate
from comp.selfcal import LooRow, SelfCalibration, agreement, formula, leave_one_out
from comp.submission import Submission

from .test_estimate import _sub, _world


def _ledger(seed=0, strengths=(0.9, 1.0, 1.1, 1.2, 1.3, 1.45, 1.6)):
    y, public, prior, model = _world(seed, n=2000)
    subs = [_sub(model(s), len(y)) for s in strengths]
    refs = [Reference(s, metrics.macro_f1(y[public], s.ans[public]), None, f"s{k}") for k, s in enumerate(subs)]
    return y, public, prior, model, refs


def test_leave_one_out_removes_an_injected_bias():
    y, public, prior, model, refs = _ledger()
    bias = 0.05

    def biased(new, use, bias=bias):  # the estimator made 0.05 too high
        e = estimate(new.sub, use, prior, samples=300)
        return Estimate(e.f1 + bias, (e.f1_interval[0] + bias, e.f1_interval[1] + bias), None, None, e.p_better,
                        e.best_ref, e.best_ref_f1)

    plain = leave_one_out(refs, 1, lambda new, use: biased(new, use, 0.0))
    cal = leave_one_out(refs, 1, biased)
    x = np.mean([r.x for r in cal.rows])
    assert (cal.a + cal.b * x) - (plain.a + plain.b * x) == pytest.approx(bias, abs=0.015)
    assert cal.mae_comp < cal.mae_raw - 0.02  # honest (held-out) MAE of the corrected estimates
    new = _sub(model(1.35), len(y))
    truth = metrics.macro_f1(y[public], new.ans[public])
    best = max(refs, key=lambda r: r.f1)
    raw = biased(Reference(new, 0.0), [best])
    fixed = cal.apply(raw, 1 - agreement(new.ans, best.sub.ans), None)  # the correction alone, no formula
    assert abs(fixed.f1 - truth) < abs(raw.f1 - truth) - 0.025, (raw.f1, fixed.f1, truth)


def test_the_leave_one_out_is_the_same_on_one_thread_or_several(monkeypatch):
    # Its estimates run in parallel; each row must still be its own submission's, in the ledger's order.
    import comp.selfcal as S

    y, public, prior, model, refs = _ledger(strengths=(1.0, 1.2, 1.4, 1.6, 1.8))

    def run(new, use):
        return estimate(new.sub, use, prior, samples=200)

    got = {}
    for workers in (1, 4):
        monkeypatch.setattr(S, "LOO_WORKERS", workers)
        got[workers] = S.choose_reference_count(refs, 3, run)
    assert got[1][1:] == got[4][1:] and got[1][0].rows == got[4][0].rows
    assert [r.name for r in got[4][0].rows] == [r.name for r in refs]
    for row, ref in zip(got[4][0].rows, refs, strict=True):
        others = sorted((r for r in refs if r is not ref), key=lambda r: -r.f1)
        assert row.truth == ref.f1 and row.comp == run(ref, others[:got[4][1]]).f1


def test_a_failing_leave_one_out_estimate_stops_the_rest(monkeypatch):
    # One estimate fails (a reference's twin unreadable, Ctrl-C): the error comes out at once, without the
    # other estimates being run first.
    import time

    import comp.selfcal as S
    from comp.errors import CompError

    monkeypatch.setattr(S, "LOO_WORKERS", 1)
    refs = _ledger(strengths=(1.0, 1.2, 1.4, 1.6, 1.8))[-1]
    calls = []

    def run(new, use):
        calls.append(new.name)
        time.sleep(0.05)
        if new is refs[0]:
            raise CompError("s0.json: unreadable")
        return _estimate()

    with pytest.raises(CompError, match="unreadable"):
        S.choose_reference_count(refs, 3, run)
    assert len(calls) <= 2, calls  # of 10: the first, and at most the one a worker had already taken


def _rows(comp_err, formula_err, x, half=0.005):
    return [LooRow(f"r{i}", 0.5, 0.5 + c, half, 0.5 + f, xi) for i, (c, f, xi) in
            enumerate(zip(comp_err, formula_err, x, strict=True))]


def _estimate(f1=0.5, half=0.005):
    return Estimate(f1, (f1 - half, f1 + half), None, None, 0.4, "best", 0.51)


def test_one_submission_far_better_than_the_rest_does_not_set_the_correction_for_all():
    # Left out, the ledger's far-best submission is estimated far too low from the others (-0.15 here, as a
    # CNN at 0.44 against a best of 0.35 was on the foreign pool); the other errors are small and unbiased.
    # A least-squares correction let that one row raise every NEW by ~0.01; the robust fit must not.
    rng = np.random.default_rng(0)
    x = rng.uniform(0.35, 0.65, 12)
    err = rng.normal(0, 0.01, 12)
    err[0], x[0] = -0.15, 0.5
    cal = SelfCalibration.fit(_rows(err, np.zeros(12), x, half=0.01))
    assert abs(cal.a + cal.b * 0.5) < 0.005
    assert cal.tau2 > 0  # the outlier still widens the interval: it is real spread, only not a bias


@pytest.mark.parametrize("k", [3, 5, 8])
def test_a_small_ledger_interval_holds_about_90_percent(k):
    # Below 9 scored submissions the interval's extra width comes from k leave-one-out errors: a variance known
    # that poorly needs Student's t, not a normal quantile (which held 68-80 % here, and 73 % of foreign pool
    # II's week-replay NEWs). NEWs drawn as the ledger's own errors are: the model's sd plus τ²·x beyond it.
    rng = np.random.default_rng(k)
    held, trials = 0, 300
    for _ in range(trials):
        x, h = rng.uniform(0.05, 0.4, k + 1), rng.uniform(0.005, 0.03, k + 1)
        err = rng.normal(0, np.sqrt((h / 1.6449) ** 2 + 0.004 * x))
        cal = SelfCalibration.fit([LooRow(f"r{i}", 0.5, 0.5 + err[i], h[i], None, x[i]) for i in range(k)])
        out = cal.apply(_estimate(0.5 + err[k], h[k]), x[k], None)
        held += out.f1_interval[0] <= 0.5 <= out.f1_interval[1]
    assert 0.85 <= held / trials <= 0.97, held / trials
    assert any("Student's t" in line for line in out.evidence)


def test_when_the_formula_does_better_on_the_ledger_the_estimate_leans_on_it():
    rng = np.random.default_rng(0)
    cal = SelfCalibration.fit(_rows(rng.normal(0, 0.05, 8), rng.normal(0, 0.005, 8), rng.uniform(0.1, 0.4, 8)))
    assert cal.mae_formula < cal.mae_comp and cal.weight_comp < 0.2
    assert "the formula did better on this ledger" in cal.line()
    e = cal.apply(_estimate(0.50), 0.2, 0.45)
    assert abs(e.f1 - 0.45) < abs(e.f1 - 0.50) / 4 and e.self_check is None  # estimate_file sets the line


def test_a_submission_both_miss_alike_does_not_hand_the_estimate_to_the_formula():
    # comp misses by ~0.015, the formula by ~0.05, and both by -0.15 on the one far-better submission. That
    # shared miss says nothing about which to lean on: comp keeps the estimate (inverse-MSE weights gave it
    # ~2/3, pulling a far NEW 0.02-0.04 towards the formula's worse guess on the foreign pool).
    rng = np.random.default_rng(1)
    comp_err, formula_err = rng.normal(0, 0.015, 12), rng.normal(0.03, 0.05, 12)
    comp_err[0], formula_err[0] = -0.15, -0.166
    cal = SelfCalibration.fit(_rows(comp_err, formula_err, rng.uniform(0.35, 0.65, 12)))
    assert cal.weight_comp > 0.9
    assert cal.mae_formula > cal.mae_comp


def test_a_near_copy_of_the_best_is_not_pulled_to_the_formula():
    # The ledger's submissions agree 71-90 % with their best reference, and there the formula did better: the
    # estimate leans on it. A NEW far closer to the best than any of them (98.9 %, a blend of the best with
    # a near twin) is where comp is exact by construction and the formula is off by best * (c - 1): its share
    # falls linearly to 0 at agreement 1 instead of staying at the ledger's weight.
    rng = np.random.default_rng(0)
    x = rng.uniform(0.10, 0.29, 8)
    cal = SelfCalibration.fit(_rows(rng.normal(0, 0.05, 8), rng.normal(0, 0.005, 8), x))
    share = 1 - cal.weight_comp
    assert share > 0.8
    assert cal.formula_share(x.min()) == pytest.approx(share) and cal.formula_share(0.5) == pytest.approx(share)
    assert cal.formula_share(x.min() / 2) == pytest.approx(share / 2) and cal.formula_share(0.0) == 0.0
    near = cal.apply(_estimate(0.50), 0.011, 0.59)  # the formula 0.09 above comp's estimate of a near copy
    corrected = 0.50 - (cal.a + cal.b * 0.011)
    assert near.f1 == pytest.approx(corrected + share * 0.011 / x.min() * (0.59 - corrected), abs=1e-9)
    assert abs(near.f1 - corrected) < 0.09 * 0.15
    far = cal.apply(_estimate(0.50), 0.2, 0.59)  # inside the ledger's range: as before
    assert far.f1 == pytest.approx((1 - share) * (0.50 - (cal.a + cal.b * 0.2)) + share * 0.59, abs=1e-9)


def test_the_interval_widens_to_the_leave_one_out_spread_where_new_is_far():
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.4, 40)
    cal = SelfCalibration.fit(_rows(rng.normal(0, 0.03, 40), rng.normal(0, 0.1, 40), x))
    far = cal.apply(_estimate(), 0.3, None)
    half = (far.f1_interval[1] - far.f1_interval[0]) / 2
    assert half == pytest.approx(1.645 * 0.03, rel=0.35)  # the model said 0.005; the ledger says otherwise
    near = cal.apply(_estimate(), 0.02, None)
    # a near copy gets less of the ledger's extra width (not none: near copies miss too, see selfcal)
    assert (near.f1_interval[1] - near.f1_interval[0]) / 2 < 0.7 * half


def _mixed_ledger(rng, n):
    """Submissions as on foreign pool II: half are CSVs without probabilities (wide model intervals, small
    misses), half overconfident models (narrow intervals, misses growing with distance from the best)."""
    x = rng.uniform(0.1, 0.5, n)
    wide = rng.random(n) < 0.5
    half = np.where(wide, 0.10, 0.01)
    err = np.where(wide, rng.normal(0, 0.02, n), rng.normal(0, 0.08 * x))
    return x, err, half


def test_from_nine_submissions_the_interval_holds_ninety_percent_of_fresh_misses():
    # The variance fit netted the wide intervals' room against the narrow ones' misses (foreign pool II:
    # 75 %); the split-conformal widening must hold about 90 % of new submissions from the same world. One
    # ledger's coverage is itself a draw (sd ~0.05 at k = 30): averaged over ten ledgers.
    held = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        x, err, half = _mixed_ledger(rng, 30)
        cal = SelfCalibration.fit([LooRow(f"r{i}", 0.5, 0.5 + e, h, None, xi)
                                   for i, (e, h, xi) in enumerate(zip(err, half, x, strict=True))])
        for xi, e, h in zip(*_mixed_ledger(rng, 300), strict=True):
            lo, hi = cal.apply(_estimate(0.5 + e, h), xi, None).f1_interval
            held.append(lo <= 0.5 <= hi)
    assert 0.86 <= np.mean(held) <= 0.94, np.mean(held)


def test_where_the_ledger_says_the_model_intervals_are_too_wide_they_narrow_by_at_most_half():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 0.3, 20)
    cal = SelfCalibration.fit(_rows(rng.normal(0, 0.004, 20), rng.normal(0, 0.1, 20), x, half=0.03))
    e = cal.apply(_estimate(0.5, 0.03), 0.2, None)
    half = (e.f1_interval[1] - e.f1_interval[0]) / 2
    assert 0.015 <= half < 0.025  # the ledger's misses were ~0.004 against ±0.03: 90 % of them fit in less


def test_winners_curse_lowers_a_different_new_and_hardly_a_near_copy():
    y, public, prior, model, refs = _ledger(seed=2)
    best = max(refs, key=lambda r: r.f1)
    scores = [r.f1 for r in refs] + [best.f1 - 0.05] * 6  # chosen as the best of 13
    far = _sub(model(1.0), len(y))
    near_p = best.sub.probs.copy()
    near_p[:20] = np.roll(near_p[:20], 1, axis=1)  # 1 % of its answers changed
    near = _sub(near_p, len(y))
    for new, most in ((far, 0.0), (near, None)):
        plain = estimate(new, [best], prior, samples=600, seed=0)
        cursed = estimate(new, [best], prior, samples=600, seed=0, chosen_from=scores)
        drop = plain.f1 - cursed.f1
        if most is None:
            assert 0 <= drop < 0.002, drop
        else:
            assert drop > 0.002 and any("winner's curse" in line for line in cursed.evidence), drop


def _scored_ledger(tmp_path, strengths=(1.0, 1.2, 1.4, 1.6)):
    """A ledger of scored CSVs in tmp_path/submissions, as `comp submissions add` keeps it."""
    from comp.submission import write_submission

    y, public, prior, model, refs = _ledger(strengths=strengths)
    ids = [f"i{k}" for k in range(len(y))]
    for r in refs:
        write_submission(tmp_path / f"{r.name}.csv", ids, r.sub.ans, r.sub.probs, force=True)
        res = CliRunner().invoke(app, ["submissions", "add", f"{r.name}.csv", "--public-f1", f"{r.f1:.4f}"])
        assert res.exit_code == 0, res.output

    def candidate(name, strength):
        sub = _sub(model(strength), len(y))
        write_submission(tmp_path / name, ids, sub.ans, sub.probs, force=True)
        return metrics.macro_f1(y[public], sub.ans[public])

    return refs, candidate


def _count_estimates(monkeypatch) -> list:
    """comp.estimate.estimate wrapped so that each call appends to the returned list (how many were made)."""
    import comp.estimate as E

    calls, real = [], E.estimate
    monkeypatch.setattr(E, "estimate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


def test_estimate_prints_the_ledger_self_check(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refs, candidate = _scored_ledger(tmp_path)
    truth = candidate("new.csv", 1.3)
    out = CliRunner().invoke(app, ["estimate", "new.csv", "--json", "--samples", "300"])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout)
    assert got["self_check"].startswith("leave-one-out on 4 scored submissions: comp MAE")
    assert "team formula MAE" in got["self_check"] and got["raw_f1"] is not None
    assert abs(got["f1"] - truth) < 0.05
    plain = json.loads(CliRunner().invoke(app, ["estimate", "new.csv", "--json", "--samples", "300",
                                                "--no-self-check"]).stdout)
    assert plain["self_check"] is None and plain["raw_f1"] is None


def test_several_candidates_share_one_self_check_and_are_estimated_as_alone(tmp_path, monkeypatch):
    # A team ranks its candidates before spending slots: the ledger's leave-one-out is the same for all of
    # them, so it runs once, and each candidate's estimate is what it would be on its own.

    monkeypatch.chdir(tmp_path)
    refs, candidate = _scored_ledger(tmp_path)
    truths = [candidate("lo.csv", 1.1), candidate("hi.csv", 1.5)]
    calls = _count_estimates(monkeypatch)
    out = CliRunner().invoke(app, ["estimate", "lo.csv", "hi.csv", "s1.csv", "--json", "--samples", "300"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    # the leave-one-out: 4 scored submissions with the best 4 and with the best one; then one per candidate
    assert len(calls) == 2 * 4 + 3
    assert [r["csv"] for r in rows] == ["lo.csv", "hi.csv", "s1.csv"]
    assert rows[2]["f1"] == pytest.approx(refs[1].f1, abs=1e-4)  # a scored CSV is its own known score
    for row, truth in zip(rows[:2], truths, strict=True):
        alone = json.loads(CliRunner().invoke(app, ["estimate", row.pop("csv"), "--json", "--samples", "300"]).stdout)
        assert row == alone and abs(row["f1"] - truth) < 0.05
    assert rows[1]["f1"] > rows[0]["f1"]
    table = CliRunner().invoke(app, ["estimate", "lo.csv", "hi.csv", "--samples", "300"])
    assert table.exit_code == 0 and "2 candidates, best estimate first" in table.output
    assert table.output.count("self-check") == 1, table.output


def test_ranking_the_ledger_folder_by_glob_skips_the_ledger_file(tmp_path, monkeypatch):
    # `comp estimate submissions/*.csv` is how a team ranks what it holds; the glob also catches ledger.csv.
    # A scored CSV, even one outside the best five the estimate uses, is at its known score.
    monkeypatch.chdir(tmp_path)
    refs, candidate = _scored_ledger(tmp_path, strengths=(1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6))
    candidate("submissions/new.csv", 1.3)
    glob = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "submissions").glob("*.csv"))
    assert "submissions/ledger.csv" in glob
    out = CliRunner().invoke(app, ["estimate", *glob, "--json", "--samples", "300"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert sorted(r["csv"] for r in rows) == sorted(g for g in glob if g != "submissions/ledger.csv")
    known = {f"submissions/{r.name}.csv": r.f1 for r in refs}
    for row in rows:
        if row["csv"] in known:
            assert row["f1"] == pytest.approx(known[row["csv"]], abs=1e-4), row["csv"]
    table = CliRunner().invoke(app, ["estimate", *glob, "--samples", "300"])
    assert table.exit_code == 0 and "skipped submissions/ledger.csv" in table.output, table.output
    alone = CliRunner().invoke(app, ["estimate", "submissions/ledger.csv"])
    assert alone.exit_code == 2 and "is the ledger, not a submission" in alone.output


def test_a_second_estimate_on_an_unchanged_ledger_reuses_its_self_check(tmp_path, monkeypatch):
    # The leave-one-out is most of an estimate's time and the same until the ledger changes: kept on disk by
    # content, it is reused, and recomputed the moment anything it depends on changes.

    monkeypatch.chdir(tmp_path)
    refs, candidate = _scored_ledger(tmp_path)
    candidate("new.csv", 1.3)
    calls = _count_estimates(monkeypatch)

    def estimate_new():
        calls.clear()
        out = CliRunner().invoke(app, ["estimate", "new.csv", "--json", "--samples", "300"])
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout), len(calls)

    first, runs = estimate_new()
    assert runs == 2 * 4 + 1  # the leave-one-out (best 4 and best 1) and the estimate itself
    assert estimate_new() == (first, 1)  # the same estimate, from the kept leave-one-out
    candidate("s4.csv", 1.7)  # a fifth scored submission: every leave-one-out estimate changes
    assert CliRunner().invoke(app, ["submissions", "add", "s4.csv", "--public-f1", "0.6"]).exit_code == 0
    third, runs = estimate_new()
    assert runs == 2 * 5 + 1 and third != first
    (tmp_path / "submissions" / ".estimate-cache.json").write_text("{half a file")  # unreadable: rebuilt
    assert estimate_new() == (third, 2 * 5 + 1)
    assert estimate_new() == (third, 1)


def test_a_new_score_that_displaces_no_reference_reuses_every_other_leave_one_out(tmp_path, monkeypatch):
    # Most of a week's new scores are not among the best few, so no other submission's references change: only
    # the winner's curse (the ledger's scores) does. The kept draws are cursed again for the new ledger, and the
    # estimate is the one a fresh computation makes, to the bit; only the new submission's two are made.
    import comp.estimate as E

    monkeypatch.chdir(tmp_path)
    refs, candidate = _scored_ledger(tmp_path, strengths=(1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6))
    candidate("new.csv", 1.3)
    calls = _count_estimates(monkeypatch)

    def estimate_new():
        calls.clear()
        return E.estimate_file("new.csv", samples=300), len(calls)

    estimate_new()
    candidate("weak.csv", 0.8)  # below every scored submission: nobody's best five or best one
    assert CliRunner().invoke(app, ["submissions", "add", "weak.csv", "--public-f1", "0.2"]).exit_code == 0
    kept, runs = estimate_new()
    assert runs == 2 + 1  # the new submission's leave-one-out (best 5, best 1) and NEW itself
    assert any("14 leave-one-out estimates reused" in line for line in kept.evidence), kept.evidence
    (tmp_path / "submissions" / ".estimate-cache.json").unlink()
    fresh, runs = estimate_new()
    assert runs == 2 * 8 + 1
    assert (kept.f1, kept.f1_interval, kept.raw_f1, kept.p_better) == (fresh.f1, fresh.f1_interval, fresh.raw_f1,
                                                                       fresh.p_better)


def test_the_team_formula_is_best_times_agreement_times_c():
    ids = 10
    best = Reference(_sub(np.eye(18)[np.arange(ids) % 18], ids), 0.6, None, "best")
    other_ans = np.eye(18)[np.r_[np.arange(8) % 18, [0, 0]]]  # agrees with best on 8 of 10
    other = Reference(_sub(other_ans, ids), 0.5, None, "other")
    new = np.r_[np.arange(5) % 18, [0] * 5]  # agrees on 5 of 10 (indices 0 and 1 hold 0 and 1)
    c = 0.5 / (0.6 * 0.8)
    assert formula(new, [other, best]) == pytest.approx(0.6 * agreement(new, best.sub.ans) * c)
    assert formula(new, [best]) == pytest.approx(0.6 * agreement(new, best.sub.ans))


@pytest.mark.parametrize("skewed_count", ["several", "one"])
def test_the_ledger_picks_how_many_references_by_how_they_did_on_it(monkeypatch, skewed_count):
    # References that err together (a vote and its own inputs) make the several-reference estimate too sure;
    # the ledger's leave-one-out shows it. Here every estimate from `skewed_count` references is made 0.06
    # too high: the estimate must use the other count, and say so only when that is the best one alone.
    import comp.estimate as E

    y, public, prior, model, refs = _ledger(strengths=(1.0, 1.15, 1.3, 1.45, 1.6))
    real = E.estimate

    def skewed(new, use, *args, **kw):
        e = real(new, use, *args, **kw)
        if (len(use) > 1) == (skewed_count == "several"):
            lo, hi = e.f1_interval
            e = Estimate(e.f1 + 0.06, (lo + 0.06, hi + 0.06), None, None, e.p_better, e.best_ref, e.best_ref_f1,
                         evidence=e.evidence)
        return e

    monkeypatch.setattr(E, "estimate", skewed)
    new = _sub(model(1.35), len(y))
    truth = metrics.macro_f1(y[public], new.ans[public])
    e = E.estimate_with_ledger(new, refs, refs, prior, samples=300)
    alone = any("the best one alone" in line for line in e.evidence)
    assert alone == (skewed_count == "several"), e.evidence
    assert abs(e.raw_f1 - truth) < 0.04, (e.raw_f1, truth)


def test_a_csv_in_another_row_order_gets_the_same_estimate():
    # A leaderboard reads rows by ImageID, so a CSV whose rows were sorted or shuffled is the same submission.
    # The self-check's correction and the formula compare NEW with its references row by row: they must do so
    # by ImageID, not by file position, or a shuffled CSV agrees ~6 % with its best reference and is corrected
    # as a stranger.
    from comp.estimate import estimate_with_ledger

    y, public, prior, model, refs = _ledger(strengths=(1.0, 1.2, 1.4, 1.6))
    new = _sub(model(1.3), len(y))
    perm = np.random.default_rng(1).permutation(len(y))
    shuffled = Submission(new.path, new.ids[perm], new.ans[perm], new.probs[perm])
    same = estimate_with_ledger(new, refs, refs, prior, samples=300)
    moved = estimate_with_ledger(shuffled, refs, refs, prior, samples=300)
    assert same.self_check and moved.as_json() == same.as_json()
    assert [a.overall for a in moved.agreement] == [a.overall for a in same.agreement]
    r = refs[1]  # a scored submission in the ledger with its rows in another order: the same ledger
    ledger = refs[:1] + [Reference(Submission(r.sub.path, r.sub.ids[perm], r.sub.ans[perm], r.sub.probs[perm]), r.f1,
                                   r.acc, r.name)] + refs[2:]
    assert estimate_with_ledger(new, ledger, ledger, prior, samples=300).as_json() == same.as_json()
