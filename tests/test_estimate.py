import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from comp import metrics
from comp.cli import app
from comp.errors import CompError
from comp.estimate import Reference, estimate, estimate_with_ledger
from comp.ledger import add, read_ledger, used_today
from comp.submission import Submission, write_submission

runner = CliRunner()


def _write(path, ids, ans, probs=None):
    return write_submission(path, ids, ans, probs, force=True)


def _world(seed=0, n=2000, shared=0.8):
    """True labels, a random public half, and calibrated models of several strengths. Models trained on the
    same data err together (real utkmask CSVs agree on 59-90 % of images): each model's signal is the
    `shared` share of one common noise plus its own, and its probabilities are the Bayes posterior of it."""
    rng = np.random.default_rng(seed)
    prior = np.r_[np.full(6, 0.12), np.full(12, 0.28 / 12)]
    prior /= prior.sum()
    y = rng.choice(18, n, p=prior)
    public = rng.random(n) < 0.5
    common = rng.normal(0, 1, (n, 18))

    def model(strength):
        signal = np.sqrt(shared) * common + np.sqrt(1 - shared) * rng.normal(0, 1, (n, 18))
        signal[np.arange(n), y] += strength
        logp = np.log(prior) + strength * signal  # Bayes posterior of a Gaussian signal
        p = np.exp(logp - logp.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    return y, public, prior, model


def _sub(p, n):
    return Submission(Path("x.csv"), np.array([f"i{k}" for k in range(n)], dtype=object), p.argmax(1), p)


def test_exact_when_new_is_the_reference(tmp_path):
    y, public, prior, model = _world()
    p = model(1.5)
    ref = _sub(p, len(y))
    e = estimate(ref, [Reference(ref, 0.5123, 61.5, "ref")], prior, samples=300)
    assert e.f1 == pytest.approx(0.5123, abs=1e-12) and e.f1_interval == pytest.approx((0.5123, 0.5123))
    assert e.accuracy == pytest.approx(61.5) and e.p_better == 0.0
    # also with a second, different reference in play
    other = _sub(model(1.0), len(y))
    e2 = estimate(ref, [Reference(other, 0.40, None, "o"), Reference(ref, 0.5123, None, "ref")], prior, samples=300)
    assert e2.f1 == pytest.approx(0.5123, abs=1e-12)


def test_estimate_lands_near_the_true_score_on_simulated_labels():
    errors, covered = [], 0
    for seed in range(6):
        y, public, prior, model = _world(seed)
        ref_p, new_p = model(1.4 + 0.1 * seed), model(1.2 + 0.15 * seed)
        def truth(p, y=y, public=public):
            return metrics.macro_f1(y[public], p.argmax(1)[public])
        ref = Reference(_sub(ref_p, len(y)), truth(ref_p), None, "ref")
        e = estimate(_sub(new_p, len(y)), [ref], prior, samples=800, seed=seed)
        errors.append(e.f1 - truth(new_p))
        covered += e.f1_interval[0] <= truth(new_p) <= e.f1_interval[1]
    assert np.abs(errors).mean() < 0.035, errors
    assert covered >= 4


def test_bad_csvs_give_clear_errors(tmp_path):
    ids = [f"i{k}" for k in range(5)]
    good = _write(tmp_path / "good.csv", ids, [0, 1, 2, 3, 4])
    cases = {
        "cols.csv": ("ImageID,label\ni0,1\n", "one column ImageID and one column ans"),
        "range.csv": ("ImageID,ans\n" + "".join(f"{i},{v}\n" for i, v in zip(ids, [0, 1, 2, 3, 18], strict=True)), "not a class 0-17"),
        "text.csv": ("ImageID,ans\n" + "".join(f"{i},x\n" for i in ids), "not a class 0-17"),
        "dup.csv": ("ImageID,ans\n" + "".join(f"{i},1\n" for i in ids + ["i0"]), "more than once"),
        "ids.csv": ("ImageID,ans\n" + "".join(f"{i},1\n" for i in ids[:4] + ["zz"]), "ImageIDs differ"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        for argv in (["estimate", str(tmp_path / name), "--ref", str(good), "--ref-f1", "0.5"],
                     ["estimate", str(good), "--ref", str(tmp_path / name), "--ref-f1", "0.5"]):
            result = runner.invoke(app, argv)
            assert result.exit_code == 2, (name, result.output)
            assert message in result.output.replace("\n", " "), (name, result.output)
    result = runner.invoke(app, ["estimate", str(good), "--ref", str(good)])
    assert result.exit_code == 2 and "--ref-f1" in result.output


def test_json_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no submissions/ ledger
    y, public, prior, model = _world(n=400)
    ids = [f"i{k}" for k in range(len(y))]
    a, b = model(1.5), model(1.2)
    ref = _write(tmp_path / "ref.csv", ids, a.argmax(1), a)
    new = _write(tmp_path / "new.csv", ids, b.argmax(1), b)
    result = runner.invoke(app, ["estimate", str(new), "--ref", str(ref), "--ref-f1", "0.55", "--ref-acc", "70",
                                 "--samples", "200", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert set(out) == {"f1", "f1_interval", "accuracy", "accuracy_interval", "p_better", "raw_f1", "self_check"}
    assert out["self_check"] is None  # no ledger here to check itself on
    assert out["f1_interval"][0] <= out["f1"] <= out["f1_interval"][1] and 0 <= out["p_better"] <= 1
    assert 0 <= out["accuracy"] <= 100


def test_ledger_add_list_and_estimate_from_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ids = [f"i{k}" for k in range(50)]
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(18), 50).astype(np.float32)
    _write(tmp_path / "out" / "a.csv", ids, p.argmax(1), p)
    r = runner.invoke(app, ["submissions", "add", "out/a.csv", "--public-f1", "0.61", "--public-acc", "70.5",
                            "--note", "first"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "submissions" / "a.csv").is_file() and (tmp_path / "submissions" / "a.probs.npy").is_file()
    (e,) = read_ledger(tmp_path / "submissions")
    assert e.name == "a.csv" and e.public_f1 == 0.61 and e.public_acc == 70.5 and len(e.sha256) == 64
    listing = runner.invoke(app, ["submissions", "list", "--daily-limit", "5"])
    assert "a.csv" in listing.output and "1 of 5" in listing.output
    est = runner.invoke(app, ["estimate", "out/a.csv", "--json", "--samples", "100"])  # the ledger is the reference
    assert est.exit_code == 0 and json.loads(est.stdout)["f1"] == pytest.approx(0.61)
    assert runner.invoke(app, ["submissions", "add", "out/a.csv", "--public-f1", "1.5"]).exit_code == 2
    assert used_today(read_ledger(tmp_path / "submissions")) == 1
    # `comp estimate new.csv --ref best.csv`: the reference's score is the ledger's, found by content
    q = rng.dirichlet(np.ones(18), 50).astype(np.float32)
    _write(tmp_path / "out" / "b.csv", ids, q.argmax(1), q)
    by_ref = runner.invoke(app, ["estimate", "out/b.csv", "--ref", "out/a.csv", "--json", "--samples", "100"])
    given = runner.invoke(app, ["estimate", "out/b.csv", "--ref", "out/a.csv", "--ref-f1", "0.61", "--ref-acc", "70.5",
                                "--json", "--samples", "100"])
    assert by_ref.exit_code == 0 and json.loads(by_ref.stdout) == json.loads(given.stdout), by_ref.output
    unscored = runner.invoke(app, ["estimate", "out/a.csv", "--ref", "out/b.csv"])
    assert unscored.exit_code == 2 and "out/b.csv: no score for this reference" in unscored.output



def test_comp_estimate_reads_a_csv_by_imageid_not_by_row(tmp_path, monkeypatch):
    # `comp estimate` on a CSV whose rows were sorted or shuffled (pandas, a spreadsheet) is the same submission:
    # the same JSON as the CSV in the ledger's order, with the self-check on, and again from the kept estimates.
    monkeypatch.chdir(tmp_path)
    y, public, prior, model = _world(n=400)
    ids = np.array([f"i{k:03d}" for k in range(len(y))], dtype=object)
    for k, strength in enumerate((1.0, 1.2, 1.4)):
        p = model(strength)
        _write(tmp_path / "out" / f"s{k}.csv", ids, p.argmax(1), p)
        add(tmp_path / "out" / f"s{k}.csv", metrics.macro_f1(y[public], p.argmax(1)[public]), folder=tmp_path / "submissions")
    p = model(1.3)
    perm = np.random.default_rng(3).permutation(len(y))
    _write(tmp_path / "out" / "new.csv", ids, p.argmax(1), p)
    _write(tmp_path / "out" / "shuffled.csv", ids[perm], p.argmax(1)[perm], p[perm])
    runs = [runner.invoke(app, ["estimate", f"out/{name}.csv", "--json", "--samples", "200"])
            for name in ("new", "shuffled", "new")]
    assert all(r.exit_code == 0 for r in runs), [r.output for r in runs]
    first, moved, again = (json.loads(r.stdout) for r in runs)
    assert first["self_check"] and moved == first and again == first

def test_ledger_survives_a_crash_mid_write(tmp_path, monkeypatch):
    folder = tmp_path / "submissions"
    ids = ["a", "b"]
    _write(tmp_path / "one.csv", ids, [0, 1])
    _write(tmp_path / "two.csv", ids, [1, 0])
    add(tmp_path / "one.csv", 0.5, folder=folder)
    before = (folder / "ledger.csv").read_bytes()
    real = os.replace

    def crash(src, dst):
        if str(dst).endswith("ledger.csv"):
            raise OSError("disk died")
        return real(src, dst)
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        add(tmp_path / "two.csv", 0.6, folder=folder)
    monkeypatch.setattr(os, "replace", real)
    assert (folder / "ledger.csv").read_bytes() == before
    assert [e.name for e in read_ledger(folder)] == ["one.csv"]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_ledger_refuses_a_bad_csv(tmp_path):
    (tmp_path / "bad.csv").write_text("ImageID,ans\na,99\n")
    with pytest.raises(CompError, match="not a class"):
        add(tmp_path / "bad.csv", 0.5, folder=tmp_path / "s")
    assert not (tmp_path / "s" / "ledger.csv").exists()


def test_ledger_add_scores_against_an_answer_key(tmp_path):
    ids = [f"i{k}" for k in range(4)]
    _write(tmp_path / "s.csv", ids, [0, 1, 2, 3])
    key = tmp_path / "key.csv"
    pd.DataFrame({"ImageID": ids, "ans": [0, 1, 5, 3], "Usage": ["Public", "Public", "Public", "Private"]}).to_csv(
        key, index=False)
    r = runner.invoke(app, ["submissions", "add", str(tmp_path / "s.csv"), "--truth", str(key), "--dir",
                            str(tmp_path / "led")])
    assert r.exit_code == 0, r.output
    (e,) = read_ledger(tmp_path / "led")
    assert e.public_acc == pytest.approx(200 / 3)
    assert e.public_f1 == pytest.approx(metrics.macro_f1([0, 1, 5], [0, 1, 2]))
    assert runner.invoke(app, ["submissions", "add", str(tmp_path / "s.csv"), "--dir", str(tmp_path / "x")]).exit_code == 2


def test_held_out_twins_measure_how_good_new_is():
    """Without labelled evidence NEW is taken at most as reliable as the reference, so a much better NEW is
    underestimated; its model's and the reference's held-out predictions on the same labelled images (the
    runs' validation files) measure it. Here a quarter of the images play the held-out set."""
    from comp.estimate import Calibration

    err_blind, err_cal, ne = [], [], 2000
    for seed in range(3):
        for s_new, s_ref in ((2.0, 1.3), (1.0, 1.4)):
            y, public, prior, model = _world(seed, n=3500)
            p_new, p_ref = model(s_new), model(s_ref)
            keep = public[:ne]
            def truth(p, y=y[:ne], keep=keep):
                return metrics.macro_f1(y[keep], p[:len(y)].argmax(1)[keep])
            held = np.array([f"t{k}" for k in range(len(y) - ne)], dtype=object)
            def twin(p, y=y[ne:], held=held):
                return Calibration(p[-len(y):], p[-len(y):].argmax(1), y, held, "simulated")
            ref = [Reference(_sub(p_ref[:ne], ne), truth(p_ref), None, "ref")]
            new = _sub(p_new[:ne], ne)
            err_blind.append(estimate(new, ref, prior, samples=400, seed=seed).f1 - truth(p_new))
            e = estimate(new, ref, prior, twin(p_new), samples=400, seed=seed, ref_calibrations=[twin(p_ref)])
            err_cal.append(e.f1 - truth(p_new))
            assert any("fitted together" in line for line in e.evidence) and e.measured_by == "same-image twins"
    assert np.abs(err_cal).mean() < 0.5 * np.abs(err_blind).mean(), (err_cal, err_blind)
    assert np.abs(err_cal).max() < 0.08, err_cal


def test_a_twin_on_a_handful_of_images_measures_nothing():
    """A blend of runs that held out different people has a twin on the few images they share (21 of
    utkmask's, 3 people); a weight fitted on those is noise and once put a model 0.11 too low. Such a twin
    counts as none, and the evidence says so."""
    from comp.estimate import Calibration

    y, public, prior, model = _world(1, n=3000)
    ne = 2000
    p_new, p_ref = model(1.2), model(1.6)
    truth = metrics.macro_f1(y[:ne][public[:ne]], p_ref[:ne].argmax(1)[public[:ne]])
    held = np.array([f"person{k}/mask1.jpg" for k in range(len(y) - ne)], dtype=object)
    twin_new = Calibration(p_new[ne:], p_new[ne:].argmax(1), y[ne:], held, "simulated")
    small = Calibration(p_ref[ne:], p_ref[ne:].argmax(1), y[ne:], held, "simulated").subset(held[:21])
    new, ref = _sub(p_new[:ne], ne), [Reference(_sub(p_ref[:ne], ne), truth, None, "ref")]
    blind = estimate(new, ref, prior, samples=300)
    e = estimate(new, ref, prior, twin_new, samples=300, ref_calibrations=[small])
    assert e.f1 == pytest.approx(blind.f1, abs=1e-12)
    assert any("too few labelled images" in line and "ref (21)" in line for line in e.evidence)
    assert e.measured_by == "CSVs alone"


def test_the_measured_weight_resamples_people_not_photos():
    """A person's 7 photos share gender and age and are right or wrong together: seven copies of each
    person must not make the measured weight look more certain than one photo each does."""
    from comp.estimate import Calibration, measured_weight

    y, _, prior, model = _world(2, n=400)
    p_new, p_ref = model(1.4), model(1.2)

    def twins(copies):
        images = np.array([f"{k:04d}_female_Asian_40/shot{j}.jpg" for k in range(len(y)) for j in range(copies)],
                          dtype=object)
        rep = lambda a: np.repeat(a, copies, axis=0)  # noqa: E731
        return [Calibration(rep(p), rep(p.argmax(1)), rep(y), images, "simulated") for p in (p_new, p_ref)]

    spread = {}
    for copies in (1, 7):
        new, ref = twins(copies)
        spread[copies] = measured_weight(new, [ref], prior, [True, True], boots=40, seed=3).std()
    assert spread[7] > 0.7 * spread[1], spread  # photo resampling gives about 1/sqrt(7) = 0.38


def test_an_estimate_nothing_measures_says_its_interval_cannot_be_trusted():
    """CSVs alone and no ledger to check itself on: the interval is the model's guess (simulated pools: it held
    14-88 % of NEWs), and the user is told so; with three scored submissions the self-check sizes it instead."""
    y, public, prior, model = _world(n=600)
    def truth(p):
        return metrics.macro_f1(y[public], p.argmax(1)[public])
    ps = [model(s) for s in (1.5, 1.4, 1.3, 1.2)]
    refs = [Reference(_sub(p, len(y)), truth(p), None, f"r{k}") for k, p in enumerate(ps[:3])]
    new = _sub(ps[3], len(y))
    alone = estimate_with_ledger(new, refs[:1], [], prior, samples=200)
    assert any("nothing measures NEW" in w for w in alone.warnings), alone.warnings
    checked = estimate_with_ledger(new, refs[:1], refs, prior, samples=200)
    assert checked.self_check and not any("nothing measures NEW" in w for w in checked.warnings)
    exact = estimate_with_ledger(refs[0].sub, refs[:1], [], prior, samples=200)
    assert not exact.warnings  # NEW is the reference: its score is known


def test_anchoring_matches_each_reference_to_its_known_score():
    # The estimator's one fit: each reference's weight solved so that its expected macro F1 under the
    # posterior is its known public F1, with the other references and NEW (at a ratio of their weight) in play.
    from comp.estimate import _f1_gap, anchor, expected_f1, make_source, posterior

    y, public, prior, model = _world(3, n=800)
    for probs in (True, False):
        subs = [_sub(model(s), len(y)) for s in (1.2, 1.5, 1.0)]
        refs = [Reference(s, metrics.macro_f1(y[public], s.ans[public]), None, f"r{k}") for k, s in enumerate(subs[:2])]
        sources = [make_source(s.probs if probs else None, s.ans, prior) for s in subs]
        assert anchor(prior, refs, sources[:2], sources[2], new_ratio=0.5) == []
        q = posterior(prior, sources, len(y))
        for ref in refs:  # four Gauss-Seidel rounds: each solved exactly, together to within a few 1e-4
            assert expected_f1(q, ref.sub.ans) == pytest.approx(ref.f1, abs=5e-4)
        assert sources[2].theta == pytest.approx(0.5 * np.mean([s.theta for s in sources[:2]]), rel=1e-9)
        # the fast path anchoring evaluates (column sums, never q in full) is that same expected F1
        base = np.log(prior) + sources[1].evidence() + sources[2].evidence()
        for theta in (0.0, 0.4, 2.5):
            logq = base + sources[0].evidence(theta)
            full = np.exp(logq - logq.max(1, keepdims=True))
            want = expected_f1(full / full.sum(1, keepdims=True), refs[0].sub.ans) - refs[0].f1
            assert _f1_gap(base, sources[0], theta, refs[0]) == pytest.approx(want, abs=1e-12)


def test_a_csv_made_elsewhere_takes_the_class_prior_of_the_dataset_in_data(tiny_root, tmp_path, monkeypatch):
    """A CSV from other code has no JSON naming its dataset. comp finds the dataset in the project's data/ whose
    eval set these ImageIDs are, and uses its train shares as --data would; with none there it says that the
    prior is the references' own predicted shares (a weak reference skews them). A dataset listing other
    images is not taken, and a wrong --data is refused."""
    from comp.data.reader import read_info_ids
    from comp.estimate import estimate_file

    monkeypatch.chdir(tmp_path)
    ids = read_info_ids(tiny_root)
    rng = np.random.default_rng(0)
    skewed = np.where(rng.random(len(ids)) < 0.7, 0, rng.integers(0, 18, len(ids)))  # a weak reference's answers
    pd.DataFrame({"ImageID": ids, "ans": skewed}).to_csv(tmp_path / "ref.csv", index=False)
    pd.DataFrame({"ImageID": ids, "ans": rng.integers(0, 18, len(ids))}).to_csv(tmp_path / "new.csv", index=False)

    def run(**kw):
        return estimate_file(tmp_path / "new.csv", [tmp_path / "ref.csv"], [0.3], samples=300, **kw)

    alone = run()
    assert any("no train set found" in w for w in alone.warnings), alone.warnings
    other = tmp_path / "data" / "aaa" / "eval"  # first by name, another eval set
    other.mkdir(parents=True)
    pd.DataFrame({"ImageID": [f"x{k}.jpg" for k in range(len(ids))], "ans": 0}).to_csv(other / "info.csv", index=False)
    os.symlink(tiny_root, tmp_path / "data" / "comp")
    found = run()
    assert found.evidence[0].startswith(f"class prior: train shares of {Path('data') / 'comp'} (found in data/")
    assert not any("no train set found" in w for w in found.warnings)
    given = run(data=tiny_root)
    assert (found.f1, found.f1_interval) == (given.f1, given.f1_interval) and found.f1 != alone.f1
    with pytest.raises(CompError, match="no readable train/train.csv"):
        run(data=tmp_path / "data" / "aaa")


def test_the_ledger_checks_a_csv_made_elsewhere_against_the_eval_set_in_data(tiny_root, tmp_path, monkeypatch):
    """The leaderboard wants info.csv's order; a CSV without comp's JSON is checked against the dataset in
    data/ that lists its images, so a shuffled one is refused before it is scored, with nothing written."""
    from comp.data.reader import read_info_ids

    monkeypatch.chdir(tmp_path)
    ids = read_info_ids(tiny_root)
    pd.DataFrame({"ImageID": ids[::-1], "ans": 0}).to_csv(tmp_path / "shuffled.csv", index=False)
    (tmp_path / "data").mkdir()
    os.symlink(tiny_root, tmp_path / "data" / "comp")
    with pytest.raises(CompError, match=r"not in data/comp/eval/info.csv's order"):
        add(tmp_path / "shuffled.csv", 0.4, folder=tmp_path / "s")
    assert not (tmp_path / "s" / "ledger.csv").exists()
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(tmp_path / "ordered.csv", index=False)
    assert add(tmp_path / "ordered.csv", 0.4, folder=tmp_path / "s").name == "ordered.csv"
    # and a synthetic / benchmark set's answer key is found the same way (comp report --submission)
    from comp.report import load_scored

    key = pd.read_csv(tiny_root / "eval_truth.csv").set_index("ImageID").loc[ids]
    assert load_scored(tmp_path / "ordered.csv", None).truth.tolist() == key["ans"].tolist()
