import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from comp import metrics
from comp.blend import geo, per_task_vote, soft, vote
from comp.cli import app
from comp.data import labels as L
from comp.ensemble import blend_files, cross_fit_groups, fit_blend, greedy_select, tune_bias
from comp.errors import CompError
from comp.estimate import calibration_for
from comp.soup import make_soup
from comp.submission import read_submission, write_submission


def test_vote_by_hand():
    a = [[1, 2, 3, 4],
         [1, 5, 6, 4],
         [7, 5, 8, 9]]
    # image 0: 1 wins 2-1; image 1: 5 wins 2-1; image 2: three-way tie → first listed; image 3: 4 wins
    assert vote(a).tolist() == [1, 5, 3, 4]
    # weights 1,1,3: input 2 outvotes the other two everywhere
    assert vote(a, [1, 1, 3]).tolist() == [7, 5, 8, 9]
    # weights 1,2,2: image 2 is a tie of inputs 1 and 2 (2 each) and input 0 (1): the larger weight, then
    # the first listed among them → input 1
    assert vote(a, [1, 2, 2]).tolist() == [1, 5, 6, 4]
    # weights 2,1,1 on image 0 of [1],[7],[7]: 2 vs 2, tie goes to the heavier input 0
    assert vote([[1], [7], [7]], [2, 1, 1]).tolist() == [1]


def test_per_task_vote_by_hand():
    c = lambda m, g, a: L.encode(m, g, a)  # noqa: E731
    answers = [[c(0, 1, 0)], [c(0, 0, 2)], [c(2, 1, 2)]]
    # mask: 0,0,2 → 0; gender: 1,0,1 → 1; age: 0,2,2 → 2 — a class none of the inputs gave
    assert per_task_vote(answers).tolist() == [c(0, 1, 2)]
    assert vote(answers).tolist() == [c(0, 1, 0)]  # a plain vote is a three-way tie → first listed


def test_soft_and_geo_means():
    p = np.array([[[0.6, 0.4] + [0] * 16], [[0.2, 0.8] + [0] * 16]])
    assert np.allclose(soft(p, [1, 1])[0, :2], [0.4, 0.6])
    g = geo(p, [1, 1])[0]
    assert np.isclose(g.sum(), 1) and g[1] > g[0]


def _sub(path, ids, ans, probs=None):
    return write_submission(path, ids, ans, probs, force=True)


def test_blend_files_errors_and_output(tmp_path):
    ids = [f"img{i}.jpg" for i in range(6)]
    a = _sub(tmp_path / "a.csv", ids, [0, 1, 2, 3, 4, 5])
    b = _sub(tmp_path / "b.csv", ids[::-1], [5, 4, 3, 2, 1, 0])  # same answers per image, other order
    r = blend_files([a, b], tmp_path / "v.csv", method="vote")
    out = pd.read_csv(r.out)
    assert out["ImageID"].tolist() == ids and out["ans"].tolist() == [0, 1, 2, 3, 4, 5]
    assert np.allclose(r.agreement, 1.0) and r.changed == [0, 0]
    c = _sub(tmp_path / "c.csv", ids[:4] + ["x.jpg", "y.jpg"], [0] * 6)
    with pytest.raises(CompError, match=r"c.csv: ImageIDs differ from a.csv's: it lacks 2 of them \(e.g. img4.jpg.* and it has 2 that a.csv does not \(e.g. x.jpg"):
        blend_files([a, c], tmp_path / "o.csv")
    (tmp_path / "bad.csv").write_text("ImageID,ans\nimg0.jpg,18\n")
    with pytest.raises(CompError, match=r"bad.csv:2: ans '18' is not a class 0-17"):
        blend_files([a, tmp_path / "bad.csv"], tmp_path / "o.csv")
    (tmp_path / "dup.csv").write_text("ImageID,ans\nimg0.jpg,1\nimg0.jpg,2\n")
    with pytest.raises(CompError, match="appears more than once"):
        blend_files([a, tmp_path / "dup.csv"], tmp_path / "o.csv")
    (tmp_path / "cols.csv").write_text("id,label\nimg0.jpg,1\n")
    with pytest.raises(CompError, match="one column ImageID and one column ans"):
        blend_files([a, tmp_path / "cols.csv"], tmp_path / "o.csv")
    with pytest.raises(CompError, match="no probabilities file"):
        blend_files([a, b], tmp_path / "s.csv", method="soft")
    with pytest.raises(CompError, match="already exists"):
        blend_files([a, b], tmp_path / "v.csv")
    result = CliRunner().invoke(app, ["ensemble", str(a), str(c), "-o", str(tmp_path / "cli.csv")])
    assert result.exit_code == 2 and "it lacks 2 of them" in result.output
    assert not (tmp_path / "cli.csv").exists()


def test_soft_blend_writes_probabilities(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(20)]
    pa, pb = (rng.dirichlet(np.ones(18), 20).astype(np.float32) for _ in range(2))
    a = _sub(tmp_path / "a.csv", ids, pa.argmax(1), pa)
    b = _sub(tmp_path / "b.csv", ids, pb.argmax(1), pb)
    r = blend_files([a, b], tmp_path / "s.csv", [3, 1], method="soft")
    probs = np.load(tmp_path / "s.probs.npy")
    assert np.allclose(probs, 0.75 * pa + 0.25 * pb, atol=1e-6)
    assert (pd.read_csv(r.out)["ans"].to_numpy() == probs.argmax(1)).all()


def _noisy_models(seed=0, n=3000):
    """Three models over true labels y: each knows a different part of the classes well."""
    rng = np.random.default_rng(seed)
    y = rng.choice(18, n, p=np.r_[np.full(6, 0.12), np.full(12, 0.28 / 12)])
    probs = []
    for m in range(3):
        logits = rng.normal(0, 1.0, (n, 18))
        good = (y % 3) == m
        logits[np.arange(n), y] += np.where(good, 3.0, 0.8)
        e = np.exp(logits)
        probs.append(e / e.sum(1, keepdims=True))
    return np.stack(probs), y, rng.integers(0, 5, n)


def test_fitted_blend_beats_the_best_single_run():
    probs, y, folds = _noisy_models()
    plan = fit_blend(probs, y, folds, ["a", "b", "c"])
    best_single = max(plan.oof[n]["f1"] for n in "abc")
    assert plan.oof["greedy blend (held-out folds)"]["f1"] >= best_single
    w = greedy_select(probs, y)
    assert np.isclose(w.sum(), 1) and (w > 0).sum() >= 2


def test_bias_tuning_lifts_macro_f1_on_an_imbalanced_case():
    rng = np.random.default_rng(1)
    n = 4000
    y = rng.choice(18, n, p=np.r_[np.full(17, 0.97 / 17), 0.03])
    logits = rng.normal(0, 1, (n, 18))
    logits[np.arange(n), y] += 3.0
    logits[:, 17] -= 3.0  # the model under-predicts the rare class, as a prior-biased model does
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    before = metrics.macro_f1(y, p.argmax(1))
    b = tune_bias(p[: n // 2], y[: n // 2])
    after = metrics.macro_f1(y[n // 2:], (np.log(p[n // 2:]) + b).argmax(1))
    assert b[17] > 0.5 and after > metrics.macro_f1(y[n // 2:], p[n // 2:].argmax(1)) + 0.01
    assert before < after


def test_fit_on_runs_end_to_end(tiny_runs, tmp_path):
    result = CliRunner().invoke(app, ["ensemble", "--fit", *map(str, tiny_runs), "-o", str(tmp_path / "fit.csv")])
    assert result.exit_code == 0, result.output
    assert "greedy blend (held-out folds)" in result.output and "answer key" in result.output
    probs = np.load(tmp_path / "fit.probs.npy")
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (tiny_runs[0] / "predictions" / "eval-flip-best.csv").is_file()  # predict ran for the missing probs
    # its labelled twin for `comp estimate`: every OOF image, the blend fitted without the image's own group
    from comp.estimate import calibration_for

    twin = calibration_for(read_submission(tmp_path / "fit.csv"))
    oof = pd.read_parquet(tiny_runs[0] / "oof.parquet")
    assert sorted(twin.images) == sorted(oof["image"]) and np.allclose(twin.probs.sum(1), 1, atol=1e-6)


def test_fit_on_single_fold_runs_uses_their_held_out_fold(tiny_runs, tmp_path):
    import shutil

    single = []
    for run in tiny_runs:  # what `comp train` leaves after --fold 0 alone: no oof.parquet
        dst = shutil.copytree(run, tmp_path / run.name)
        (dst / "oof.parquet").unlink()
        val = pd.read_parquet(dst / "validation.parquet")
        val[val["fold"] == 0].to_parquet(dst / "validation.parquet")
        single.append(dst)
    held = pd.read_parquet(single[0] / "validation.parquet")
    groups = cross_fit_groups(held.sort_values("image").reset_index(drop=True))
    assert len(np.unique(groups)) == min(5, held["person"].nunique())
    assert (pd.DataFrame({"p": held.sort_values("image")["person"].to_numpy(), "g": groups})
            .groupby("p")["g"].nunique() == 1).all()  # no person in two cross-fitting groups
    result = CliRunner().invoke(app, ["ensemble", "--fit", *map(str, single), "-o", str(tmp_path / "fit.csv")])
    assert result.exit_code == 0, result.output
    assert np.allclose(np.load(tmp_path / "fit.probs.npy").sum(1), 1, atol=1e-4)
    (single[1] / "validation.parquet").unlink()
    result = CliRunner().invoke(app, ["ensemble", "--fit", *map(str, single), "-o", str(tmp_path / "fit2.csv")])
    assert result.exit_code == 2 and "validation.parquet" in result.output
    assert not (tmp_path / "fit2.csv").exists()


def test_soup_of_identical_checkpoints_is_the_checkpoint(tiny_runs, tmp_path):
    ckpt = tiny_runs[0] / "fold0" / "best.safetensors"
    r = make_soup([ckpt, ckpt, ckpt], tmp_path / "soup", kind="uniform")
    a, b = load_file(str(ckpt)), load_file(str(r.out / "fold0" / "best.safetensors"))
    assert a.keys() == b.keys() and all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6) for k in a)
    assert abs(r.uniform_f1 - r.ingredients[0].f1) < 1e-9
    # the soup is a run folder predict accepts
    from comp.predict import predict

    assert predict([r.out], tmp_path / "soup.csv", tta="none").n > 0


def test_soup_refuses_mismatched_architectures(tiny_runs, tmp_path):
    with pytest.raises(CompError, match="one architecture and head"):
        make_soup([tiny_runs[0] / "fold0" / "best.safetensors", tiny_runs[1] / "fold0" / "best.safetensors"],
                  tmp_path / "soup")
    with pytest.raises(CompError, match="another fold"):
        make_soup([tiny_runs[0] / "fold0" / "best.safetensors", tiny_runs[0] / "fold1" / "best.safetensors"],
                  tmp_path / "soup")


def test_blends_of_predictions_have_a_labelled_twin(tiny_runs, tmp_path):
    """`comp estimate` measures a CSV's model on held-out images: the twin of a soft blend of two predictions
    is the soft blend of the runs' validation probabilities; the last checkpoint has none."""
    from comp.estimate import calibration_for
    from comp.predict import predict
    from comp.runs import oof_probs, read_validation

    paths = [predict([r], tmp_path / f"{r.name}.csv", tta="none").csv for r in tiny_runs]
    blend_files(paths, tmp_path / "blend.csv", method="soft")
    twin = calibration_for(read_submission(tmp_path / "blend.csv"))
    vals = [read_validation(r).set_index("image").loc[twin.images] for r in tiny_runs]
    assert np.allclose(twin.probs, np.mean([oof_probs(v) for v in vals], 0), atol=1e-6)
    assert (twin.y == vals[0]["label"].to_numpy()).all() and len(twin.images) == len(vals[0])
    last = predict([tiny_runs[0]], tmp_path / "last.csv", tta="none", ckpt="last").csv
    assert calibration_for(read_submission(last)) is None


def test_provenance_round_trips_and_every_producer_builds_its_twin(tiny_runs, tmp_path):
    """The record a producer writes is the record the estimator reads back, for predict, every blend method
    (a method registered later included) and --fit; each kind's twin comes from the producer's registry entry."""
    from dataclasses import replace

    from comp.blend import METHODS, Method
    from comp.predict import predict
    from comp.submission import TWINS, read_provenance, twin_of

    preds = [predict([r], tmp_path / f"{r.name}.csv", tta="flip") for r in tiny_runs]
    for p in preds:
        back = read_provenance(p.csv)
        assert replace(back, files={}) == replace(p.prov, files={}) and back.kind == "predict" and back.tta == "flip"
        assert twin_of(p.prov, True) is not None
    METHODS.register("first", Method(lambda answers, weights: answers[0], needs_probs=False))
    try:
        for method in METHODS:
            out = tmp_path / f"{method}.csv"
            blend_files([p.csv for p in preds], out, method=method, weights=[2, 1])
            prov = read_provenance(out)
            assert (prov.kind, prov.method, prov.inputs) == ("blend", method, [str(p.csv) for p in preds])
            assert prov.weights == pytest.approx([2, 1])
            twin = twin_of(prov, METHODS[method].needs_probs)
            inputs = [twin_of(p.prov, True).subset(twin.images) for p in preds]
            if method == "first":  # a new method reaches the twin through the registry, nothing else to edit
                assert (twin.ans == inputs[0].ans).all()
    finally:
        del METHODS["first"]
    r = CliRunner().invoke(app, ["ensemble", "--fit", *map(str, tiny_runs), "-o", str(tmp_path / "fit.csv")])
    assert r.exit_code == 0, r.output
    prov = read_provenance(tmp_path / "fit.csv")
    assert prov.kind == "fit" and prov.runs == [str(r) for r in tiny_runs] and len(prov.weights) == 2
    assert twin_of(prov, True) is not None and set(TWINS) == {"predict", "blend", "fit"}


def test_fit_on_runs_of_different_folds_uses_the_folds_all_held_out(tiny_runs, tmp_path):
    import shutil

    one = shutil.copytree(tiny_runs[1], tmp_path / "b_fold0")  # the second run as if trained on fold 0 alone
    (one / "oof.parquet").unlink()
    val = pd.read_parquet(one / "validation.parquet")
    val[val["fold"] == 0].to_parquet(one / "validation.parquet")
    result = CliRunner().invoke(app, ["ensemble", "--fit", str(tiny_runs[0]), str(one), "-o", str(tmp_path / "fit.csv")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    n = int((val["fold"] == 0).sum())
    assert f"{n} images of fold 0)" in result.output
    twin = calibration_for(read_submission(tmp_path / "fit.csv"))  # the estimator's twin: the same images
    assert sorted(twin.images) == sorted(val.loc[val["fold"] == 0, "image"])

    other = shutil.copytree(tiny_runs[0], tmp_path / "a_fold1")  # fold 1 alone: nothing in common with one
    (other / "oof.parquet").unlink()
    val = pd.read_parquet(other / "validation.parquet")
    val[val["fold"] == 1].to_parquet(other / "validation.parquet")
    result = CliRunner().invoke(app, ["ensemble", "--fit", str(other), str(one), "-o", str(tmp_path / "fit2.csv")])
    assert result.exit_code == 2 and "no fold was held out by every run" in result.output.replace("\n", " ")
    assert not (tmp_path / "fit2.csv").exists()
