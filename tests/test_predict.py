import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from comp.cli import app
from comp.errors import CompError
from comp.predict import predict, validate
from comp.submission import probs_path, read_submission


def test_submission_follows_info_csv(tiny_root, tiny_runs, tmp_path):
    r = predict([tiny_runs[0]], tmp_path / "a.csv", tta="none")
    info = pd.read_csv(tiny_root / "eval" / "info.csv", dtype=str)
    sub = pd.read_csv(r.csv, dtype=str)
    assert list(sub.columns) == ["ImageID", "ans"]
    assert sub["ImageID"].tolist() == info["ImageID"].tolist()
    probs = np.load(probs_path(r.csv))
    assert probs.dtype == np.float32 and probs.shape == (len(info), 18)
    assert np.allclose(probs.sum(1), 1, atol=1e-4)
    assert (sub["ans"].astype(int).to_numpy() == probs.argmax(1)).all()
    assert r.prov.tta == "none" and len(r.prov.checkpoints) == 2
    assert r.scores is not None and 0 <= r.scores["public"]["f1"] <= 1  # the synthetic set has an answer key


def test_flip_tta_changes_probabilities(tiny_runs, tmp_path):
    a = read_submission(predict([tiny_runs[0]], tmp_path / "none.csv", tta="none").csv)
    b = read_submission(predict([tiny_runs[0]], tmp_path / "flip.csv", tta="flip").csv)
    assert not np.allclose(a.probs, b.probs)
    assert np.allclose(b.probs.sum(1), 1, atol=1e-4)


def test_two_runs_average(tiny_runs, tmp_path):
    a, b = (read_submission(predict([r], tmp_path / f"{r.name}.csv", tta="flip").csv) for r in tiny_runs)
    both = read_submission(predict(list(tiny_runs), tmp_path / "both.csv", tta="flip").csv)
    assert np.allclose(both.probs, (a.probs + b.probs) / 2, atol=1e-5)


def test_never_overwrites_without_force(tiny_runs, tmp_path):
    out = tmp_path / "s.csv"
    out.write_text("ImageID,ans\nx,0\n")
    with pytest.raises(CompError, match="already exists; pass --force"):
        predict([tiny_runs[0]], out, tta="none")
    assert out.read_text() == "ImageID,ans\nx,0\n"
    predict([tiny_runs[0]], out, tta="none", force=True)
    assert len(pd.read_csv(out)) > 1


def test_missing_eval_image_stops_before_any_work(tiny_copy, tiny_runs, tmp_path):
    victims = sorted((tiny_copy / "eval" / "images").iterdir())[:5]
    for v in victims:
        v.unlink()
    result = CliRunner().invoke(app, ["predict", str(tiny_runs[0]), "--data", str(tiny_copy), "-o",
                                      str(tmp_path / "x.csv")])
    assert result.exit_code == 2
    text = result.output.replace("\n", "")
    assert "has no image in eval/images" in text and "and 2 more" in text
    assert sum(v.name in text for v in victims) == 3  # names the first three
    assert not (tmp_path / "x.csv").exists() and not probs_path(tmp_path / "x.csv").exists()


def test_validate_reports_with_and_without_tta(tiny_runs):
    (v,) = validate([tiny_runs[1]], tta="flip")
    assert v.folds == [0, 1] and v.images > 0
    assert set(v.plain) == set(v.tta) == {"f1", "f1_mask", "f1_gender", "f1_age", "acc"}
    result = CliRunner().invoke(app, ["predict", str(tiny_runs[0]), "--validate"])
    assert result.exit_code == 0 and "flip" in result.output
