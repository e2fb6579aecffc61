import math

import numpy as np
import pandas as pd
import pytest
import torch
from timm.data.mixup import mixup_target
from typer.testing import CliRunner

from comp import runs
from comp.cli import app
from comp.config import load_config
from comp.data import labels as L
from comp.errors import CompError
from comp.models import Head, create_model
from comp.train import engine
from comp.train.engine import train
from comp.train.factory import check_config
from comp.train.losses import Criterion

from .conftest import TINY, tiny_cfg


def test_loss_goes_down(tiny_root, tmp_path):
    r = train(tiny_cfg(tiny_root, "train.epochs=4"), tmp_path / "run")
    losses = [h["train_loss"] for h in r.folds[0].history]
    assert losses[-1] < 0.8 * losses[0], losses
    fold = tmp_path / "run" / "fold0"
    for name in ("best.safetensors", "last.safetensors", "metrics.csv", "confusion.csv", "confusion.png", "done"):
        assert (fold / name).is_file(), name
    m = pd.read_csv(fold / "metrics.csv")
    assert list(m["epoch"]) == [1, 2, 3, 4]
    assert {"f1", "f1_mask", "f1_gender", "f1_age", "acc", "val_loss"} <= set(m.columns)
    assert (tmp_path / "run" / "config.yaml").is_file()
    val = runs.read_validation(tmp_path / "run")  # one fold trained: its held-out images, no oof.parquet
    frame = runs.train_frame(tiny_cfg(tiny_root))
    assert sorted(val["image"]) == sorted(frame[frame["fold"] == 0]["image"])
    assert not (tmp_path / "run" / "oof.parquet").exists()


@pytest.mark.parametrize("kind", ["multiclass", "multitask"])
def test_heads_give_valid_class_probabilities(kind):
    head = Head(kind)
    model = create_model(load_config(None, ["model.name=resnet10t", f"model.head={kind}"]).model, head)
    logits = model(torch.randn(4, 3, 32, 24))
    assert logits.shape == (4, 18 if kind == "multiclass" else 8)
    p = head.probs(logits)
    assert p.shape == (4, 18) and (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(4))
    if kind == "multitask":  # the joint's marginals are the heads' own softmaxes
        marg = L.heads_from_probs(p.detach().numpy())
        for h, part in head.split(logits).items():
            assert np.allclose(marg[h], torch.softmax(part, 1).detach().numpy(), atol=1e-5)


def test_mixup_trains_end_to_end_with_multitask(tiny_root, tmp_path):
    r = train(tiny_cfg(tiny_root, "train.epochs=1", "model.head=multitask", "mixup.mixup_alpha=0.4",
                       "mixup.cutmix_alpha=1.0", "loss.terms={focal: 1.0, soft_f1: 0.5}", "train.ema=true",
                       "data.sampler=weighted", "loss.class_weights=sqrt"), tmp_path / "run")
    assert r.folds[0].best_epoch == 1 and 0 <= r.folds[0].best["f1"] <= 1


def test_resume_equals_uninterrupted_run(tiny_root, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_root, "train.epochs=3", "augment.preset=light", "mixup.mixup_alpha=0.4")
    train(cfg, tmp_path / "whole")
    real = engine.predict_probs
    calls = {"n": 0}

    def crash_in_epoch_3(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(engine, "predict_probs", crash_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(engine, "predict_probs", real)
    assert len(pd.read_csv(tmp_path / "cut" / "fold0" / "metrics.csv")) == 2
    with pytest.raises(CompError, match="already exists"):
        train(cfg, tmp_path / "cut")
    train(cfg, tmp_path / "cut", resume=True)
    a, b = (pd.read_csv(tmp_path / d / "fold0" / "metrics.csv").drop(columns=["seconds", "images_per_s", "data_wait"])
            for d in ("whole", "cut"))
    pd.testing.assert_frame_equal(a, b, rtol=1e-5)


def test_kfold_oof_covers_every_train_image_once(tiny_root, tmp_path):
    cfg = tiny_cfg(tiny_root, "train.epochs=1")
    r = train(cfg, tmp_path / "run", folds=[0, 1])
    oof = runs.read_oof(tmp_path / "run")
    df = runs.train_frame(cfg)
    assert len(oof) == len(df) and oof["image"].is_unique and set(oof["image"]) == set(df["image"])
    assert np.allclose(runs.oof_probs(oof).sum(1), 1, atol=1e-4)
    folds = oof.set_index("image")["fold"]
    assert (df.set_index("image")["fold"] == folds.loc[df["image"]].to_numpy()).all()
    assert r.oof is not None and 0 <= r.oof["f1"] <= 1


def test_unknown_config_key_lists_valid_keys(tmp_path):
    with pytest.raises(CompError, match="unknown key train.epoch;.*epochs"):
        load_config(None, ["train.epoch=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nme: resnet18\n")
    with pytest.raises(CompError, match=r"bad.yaml: unknown key model.nme; valid keys of model: name"):
        load_config(bad)
    with pytest.raises(CompError, match="train.epochs must be int"):
        load_config(None, ["train.epochs=many"])
    with pytest.raises(CompError, match="model.head='twoheads' is not a known head; choose one of multiclass"):
        check_config(load_config(None, ["model.head=twoheads"]))
    result = CliRunner().invoke(app, ["train", "--set", "train.epoch=3"])
    assert result.exit_code == 2 and "unknown key train.epoch" in result.output


def test_offline_hub_weights_fail_at_once_naming_the_local_file_option(monkeypatch):
    import time

    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    t = time.time()
    with pytest.raises(CompError, match=r"model.weights=/path/to/weights.safetensors"):
        create_model(load_config(None, ["model.name=resnet10t", "model.weights=hub"]).model)
    assert time.time() - t < 20


def test_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    cfg = load_config(None, ["model.name=resnet10t"]).model
    src = create_model(cfg)
    # a backbone checkpoint with another classifier size: the classifier is skipped, the rest loaded
    other = {k: v for k, v in src.state_dict().items()}
    other["fc.weight"] = torch.zeros(1000, other["fc.weight"].shape[1])
    save_file(other, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        m = create_model(load_config(None, ["model.name=resnet10t", f"model.weights={tmp_path / f}"]).model)
        assert torch.equal(m.state_dict()["conv1.0.weight"], src.state_dict()["conv1.0.weight"])
    with pytest.raises(CompError, match="file not found"):
        create_model(load_config(None, ["model.name=resnet10t", "model.weights=/nope.pth"]).model)
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "foo.safetensors"))
    with pytest.raises(CompError, match="only 0 of the model"):
        create_model(load_config(None, ["model.name=resnet10t", f"model.weights={tmp_path / 'foo.safetensors'}"]).model)


@pytest.mark.parametrize("every", [1, 50])  # 50: checked in one sync at the epoch's end, as on a GPU
def test_nan_loss_stops_with_the_step(tiny_root, tmp_path, monkeypatch, every):
    from comp.train import engine
    from comp.train.losses import Criterion

    monkeypatch.setattr(engine, "sync_every", lambda device: every)

    real, calls = Criterion.__call__, []

    def nan_on_second_step(self, logits, target):
        calls.append(1)
        loss = real(self, logits, target)
        return loss * float("nan") if len(calls) == 2 else loss
    monkeypatch.setattr(Criterion, "__call__", nan_on_second_step)
    with pytest.raises(CompError, match=r"loss became nan at epoch 1, step 2; lower optim.lr"):
        train(tiny_cfg(tiny_root), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing to resume: the corrected rerun needs no --force


def test_losses():
    from comp.train.losses import cross_entropy, focal, soft_f1

    logits = torch.randn(6, 18)
    t = mixup_target(torch.tensor([0, 1, 2, 3, 4, 5]), 18, smoothing=0.1)
    assert torch.allclose(t.sum(1), torch.ones(6))
    assert math.isclose(t[0, 0].item(), 0.9 + 0.1 / 18, rel_tol=1e-6)
    assert torch.allclose(focal(logits, t, gamma=0.0), cross_entropy(logits, t))
    assert focal(logits, t, gamma=2.0) < cross_entropy(logits, t)
    perfect = torch.full((6, 18), -20.0).scatter_(1, torch.arange(6).view(-1, 1), 20.0)
    assert soft_f1(perfect, mixup_target(torch.arange(6), 18)) < 1e-3
    assert soft_f1(-perfect, mixup_target(torch.arange(6), 18)) > 0.99
    with pytest.raises(CompError, match="loss.terms=.dice. is not a known loss; choose one of ce, focal, soft_f1"):
        Criterion(load_config(None, ["loss.terms={dice: 1}"]).loss, Head("multiclass"))


def test_metrics_file_has_the_gpu_memory_column_only_when_trained_on_a_gpu(tmp_path):
    from comp import runs

    row = {c: 1.0 for c in runs.METRIC_COLUMNS}
    runs.write_metrics(tmp_path, [row])
    assert list(runs.read_metrics(tmp_path).columns) == runs.METRIC_COLUMNS
    runs.write_metrics(tmp_path, [row, row | {"gpu_peak_gib": 3.5}])  # what engine.train_fold adds on CUDA
    m = runs.read_metrics(tmp_path)
    assert list(m.columns) == runs.METRIC_COLUMNS + ["gpu_peak_gib"] and m["gpu_peak_gib"].iloc[-1] == 3.5


def test_full_run_trains_every_person_for_every_epoch_and_predicts(tiny_root, tiny_runs, tmp_path):
    """`--folds full`: the final refit on every person. Nobody is held out, so it trains train.epochs (early
    stopping cannot apply), keeps the last epoch as its model, and what needs held-out people says why not."""
    from safetensors.torch import load_file

    from comp.ensemble import fit
    from comp.estimate import estimate_file
    from comp.predict import predict
    from comp.report import make_report
    from comp.submission import read_submission, twin_of
    from comp.train.factory import create_loaders

    cfg = tiny_cfg(tiny_root, "train.epochs=3", "train.early_stopping=1")
    df = runs.train_frame(cfg)
    tr_idx = create_loaders(cfg, df, runs.FULL)[2]
    assert sorted(tr_idx) == list(range(len(df)))  # every image of every person trains

    run = tmp_path / "full"
    out = CliRunner().invoke(app, ["train", "--folds", "full", "-o", str(run), "--set", f"data.root={tiny_root}",
                                   *(a for kv in TINY + ["train.epochs=3", "train.early_stopping=1"]
                                     for a in ("--set", kv))])
    assert out.exit_code == 0, out.output
    assert "nobody held out" in out.output
    assert runs.trained_folds(run) == [runs.FULL] and not list(run.glob("fold*"))
    assert list(pd.read_csv(run / "full" / "metrics.csv")["epoch"]) == [1, 2, 3]
    best, last = (load_file(run / "full" / f"{w}.safetensors") for w in ("best", "last"))
    assert all(torch.equal(best[k], last[k]) for k in last)
    assert not (run / "validation.parquet").exists() and not (run / "oof.parquet").exists()

    csv = tmp_path / "full.csv"
    predict([run], csv)
    sub = read_submission(csv)
    assert len(sub) == len(runs.eval_frame(cfg)) and twin_of(sub.prov, with_probs=True) is None
    ref = tmp_path / "kfold.csv"
    predict([tiny_runs[0]], ref)
    e = estimate_file(csv, [ref], [0.5], ledger_dir=tmp_path / "no-ledger", samples=200)  # from the CSVs alone
    assert 0 <= e.f1 <= 1

    for attempt in (lambda: runs.read_validation(run), lambda: fit([run, tiny_runs[0]], tmp_path / "fit.csv"),
                    lambda: make_report(run, tmp_path / "report")):
        with pytest.raises(CompError, match=r"trained on every person \(--folds full\)"):
            attempt()
    with pytest.raises(CompError, match="a run is one or the other"):
        train(cfg, run, folds=[0], resume=True)
    with pytest.raises(CompError, match="one model on every person"):
        train(cfg, tmp_path / "mixed", folds=[0, runs.FULL])


def test_train_folds_are_checked_before_anything_is_written(tmp_path, tiny_root):
    # `comp train --folds` and `comp sweep --folds` read one spec the same way: a typo or a fold that does not
    # exist is one clear line and no run folder.
    for spec, says in (("7", "fold 7 does not exist"), ("0;1", "expected all, full or a list")):
        run = tmp_path / f"run{len(spec)}"
        out = CliRunner().invoke(app, ["train", "--folds", spec, "-o", str(run), "--set", f"data.root={tiny_root}"])
        assert out.exit_code != 0 and says in out.output, out.output
        assert not run.exists()
