"""Faults: a kill at any instant of a write, and hostile input. After a SIGKILL at every file operation
of a checkpoint save, a submission write and a ledger entry, the next command sees the old state or the
new one, never a mix; bad CSVs, probabilities, JSON and pipelines end in one clear line, exit 2, and
nothing written."""
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from comp import ledger, runs, submission
from comp import predict as predict_module
from comp.cli import app
from comp.errors import CompError
from comp.ledger import read_ledger
from comp.predict import predict
from comp.submission import Provenance, meta_path, probs_path, read_submission, write_submission
from comp.train import engine
from comp.train.engine import train

from .conftest import tiny_cfg
from .killpoints import run_forked, run_forked_together

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kill tests fork")


def _scripted_f1(monkeypatch):
    """Epoch 2 is worse than epoch 1, so the two saves take both paths (a new best / the best carried over)."""
    real = engine.validate

    def validate(f):
        row, probs, rows = real(f)
        return {**row, "f1": {1: 0.5, 2: 0.4}[f.state.epoch + 1]}, probs, rows
    monkeypatch.setattr(engine, "validate", validate)


def _fold_files(fold):
    m = runs.read_metrics(fold).drop(columns=["seconds", "images_per_s", "data_wait"])
    best = load_file(str(fold / "best.safetensors"))
    return m, best, np.load(fold / "val_probs.npy"), load_file(str(fold / "last.safetensors"))


def test_resume_after_a_kill_at_every_write_of_a_checkpoint_save(tiny_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)  # the forked children train on one thread: no OpenMP pool across fork
    _scripted_f1(monkeypatch)
    monkeypatch.setattr(runs, "write_confusion", lambda *a: None)  # a PNG per run: not what is tested here
    # timm's 0.4M-parameter test model: each of the ~70 kill points trains twice, saving ~1.5 MB, not 60 MB
    cfg = tiny_cfg(tiny_root, "model.name=test_resnet", "train.epochs=2", "train.ema=true", "augment.preset=light",
                   "mixup.mixup_alpha=0.4")
    code, total = run_forked(lambda: train(cfg, tmp_path / "whole"), (runs, "save_checkpoint"), None)
    assert code == 0 and total > 30  # two saves' worth of operations
    whole = _fold_files(tmp_path / "whole" / "fold0")

    def resume(out):
        if (out / "config.yaml").exists():
            train(cfg, out, resume=True)
        else:  # killed in the first save of a fresh run: nothing was kept, so a plain rerun
            train(cfg, out)
    for start in range(0, total, 2):  # two at a time: one per core
        points = list(range(start, min(start + 2, total)))
        killed = run_forked_together([(lambda k=k: train(cfg, tmp_path / f"kill{k}"), (runs, "save_checkpoint"), k)
                                      for k in points])
        assert [c for c, _ in killed] == [-9] * len(points), points
        resumed = run_forked_together([(lambda k=k: resume(tmp_path / f"kill{k}"), None, None) for k in points])
        assert [c for c, _ in resumed] == [0] * len(points), points
        for k in points:
            fold = tmp_path / f"kill{k}" / "fold0"
            m, best, val, last = _fold_files(fold)
            pd.testing.assert_frame_equal(m, whole[0], rtol=1e-5, obj=f"metrics after a kill at write {k}")
            assert all(torch.equal(best[n], whole[1][n]) for n in best), k
            assert np.array_equal(val, whole[2]), k
            assert all(torch.equal(last[n], whole[3][n]) for n in last), k
            assert sorted(p.name for p in fold.glob("state-*")) == ["state-0002"], k
            assert not list(fold.glob(".*.tmp")), k


def test_a_kill_while_replacing_a_submission_leaves_the_old_set_or_the_new(tiny_runs, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "s.csv"
    predict([tiny_runs[0]], out, tta="none")
    old = read_submission(out)
    code, total = run_forked(lambda: predict([tiny_runs[1]], tmp_path / "new.csv", tta="flip"),
                             (predict_module, "write_submission"), None)
    new = read_submission(tmp_path / "new.csv")
    assert code == 0 and total >= 3 and not np.array_equal(old.ans, new.ans)
    for k in range(total):
        target = tmp_path / f"k{k}.csv"
        for src, dst in ((out, target), (probs_path(out), probs_path(target)), (meta_path(out), meta_path(target))):
            dst.write_bytes(src.read_bytes())
        code, _ = run_forked(lambda t=target: predict([tiny_runs[1]], t, tta="flip", force=True),
                             (predict_module, "write_submission"), k)
        assert code == -9
        try:
            got = read_submission(target)
        except CompError as e:  # a half-replaced set is recognised, never paired
            assert "were not written with this CSV" in str(e), (k, str(e))
            continue
        assert np.array_equal(got.ans, old.ans) or np.array_equal(got.ans, new.ans), k
        assert np.array_equal(got.probs.argmax(1), got.ans), k


def test_a_kill_while_adding_to_the_ledger_leaves_it_whole(tmp_path):
    ids = [f"{i}.jpg" for i in range(30)]
    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path in (a, b):
        p = rng.dirichlet(np.ones(18), 30)
        write_submission(path, ids, p.argmax(1), p, Provenance())
    folder = tmp_path / "ledger"
    ledger.add(a, 0.5, folder=folder)
    code, total = run_forked(lambda: ledger.add(b, 0.6, folder=tmp_path / "count"), (ledger, "add"), None)
    assert code == 0 and total >= 4
    for k in range(total):
        f = tmp_path / f"l{k}"
        f.mkdir()
        for p in folder.iterdir():
            (f / p.name).write_bytes(p.read_bytes())
        code, _ = run_forked(lambda f=f: ledger.add(b, 0.6, folder=f), (ledger, "add"), k)
        assert code == -9
        entries = read_ledger(f)
        assert [e.name for e in entries] in (["a.csv"], ["a.csv", "b.csv"]), k
        for e in entries:
            read_submission(e.path(f))  # every recorded CSV is a whole, valid set
        ledger.add(b, 0.6, folder=f) if len(entries) == 1 else None  # and the add can be made again
        assert [e.name for e in read_ledger(f)] == ["a.csv", "b.csv"]


# ----------------------------------------------------------------------------------------- bad input
def _set(tmp_path, name="s.csv", n=20, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(18), n)
    return write_submission(tmp_path / name, [f"{i}.jpg" for i in range(n)], p.argmax(1), p,
                            Provenance(kind="predict", runs=["r"], tta="none"), force=True)


@pytest.mark.parametrize("probs, message", [
    (lambda p: np.full_like(p, np.nan), r"row 0 holds NaN or infinity \(20 such rows\)"),
    (lambda p: np.where(np.arange(18) == 3, np.inf, p), r"holds NaN or infinity"),
    (lambda p: p - 0.1, r"holds a negative probability"),
    (lambda p: p * 2, r"row 0 sums to 2, not 1 .* save probabilities \(softmax\), not logits"),
    (lambda p: p[:, ::-1], r"the CSV answers class .* but the most probable class is"),
    (lambda p: p[:5], r"shape \(5, 18\), expected \(20, 18\)"),
    (lambda p: p.astype(str), r"probabilities of dtype <U"),
    (lambda p: np.array([{"a": 1}], dtype=object), r"not a readable .npy array"),
])
def test_probabilities_are_validated(tmp_path, probs, message):
    csv = _set(tmp_path)
    (meta_path(csv)).unlink()  # no manifest: the probabilities alone must be checked
    p = np.load(probs_path(csv))
    np.save(probs_path(csv), probs(p), allow_pickle=True)
    with pytest.raises(CompError, match=message):
        read_submission(csv)


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order'",
                                     b"not numpy at all"])
def test_broken_npy_files_are_one_line(tmp_path, content):
    csv = _set(tmp_path)
    meta_path(csv).unlink()
    probs_path(csv).write_bytes(content)
    with pytest.raises(CompError, match=r"not a readable .npy array"):
        read_submission(csv)


@pytest.mark.parametrize("content, message", [
    (b"", r"not a readable JSON file"),
    (b"\xff\xfe\x00binary", r"not a readable JSON file"),
    (b"{truncated", r"not a readable JSON file"),
    (b"[1, 2, 3]", r"expected a JSON object describing the submission, got list"),
    (b'{"kind": "blend", "method": "median", "inputs": ["a.csv"]}', r"blend method 'median' is unknown to this comp"),
    (b'{"ensemble": "median", "inputs": ["a.csv"]}', r"blend method 'median' is unknown"),  # comp's older JSON
    (b'{"kind": "predict", "runs": "r"}', r"provenance field 'runs' has the wrong type"),
    (b'{"kind": "fit", "runs": ["r"], "weights": [1, "x"]}', r"'weights' must hold finite numbers"),
    (b'{"kind": "magic"}', r"provenance kind 'magic' unknown"),
    (b'{"colour": "blue"}', None),  # an old untyped JSON with other fields: kept as stats, the set reads
])
def test_broken_provenance_is_one_line(tmp_path, content, message):
    csv = _set(tmp_path)
    meta_path(csv).write_bytes(content)
    if message is None:
        assert read_submission(csv).prov.kind == "external"
        return
    with pytest.raises(CompError, match=message):
        read_submission(csv)


def test_half_replaced_set_is_refused_not_paired(tmp_path):
    csv = _set(tmp_path, seed=0)
    other = _set(tmp_path, "other.csv", seed=1)
    probs_path(csv).write_bytes(probs_path(other).read_bytes())  # new probabilities beside the old CSV
    with pytest.raises(CompError, match=r"were not written with this CSV"):
        read_submission(csv)
    r = CliRunner().invoke(app, ["ensemble", str(csv), str(other), "-m", "soft", "-o", str(tmp_path / "b.csv")])
    assert r.exit_code == 2 and "were not written with this CSV" in r.output and not (tmp_path / "b.csv").exists()


@pytest.mark.parametrize("text, message", [
    ("", r"the file is empty"),
    ("ImageID,ans\n", r"no rows under the header"),
    ("ImageID,ans,ans\na,1,2\n", r"columns are ImageID,ans,ans; a submission needs one column ImageID and one"),
    ("id,ans\na,1\n", r"columns are id,ans"),
    ("ImageID,ans\na,1\nb\n", r"x.csv:3: 1 fields where the header has 2"),
    ("ImageID,ans\na,1,5\n", r"x.csv:2: 3 fields where the header has 2"),
    ("ImageID,ans\na,1.5\n", r":2: ans '1.5' is not a class 0-17"),
    ("ImageID,ans\na,1\na,2\n", r":3: ImageID a appears more than once"),
    (",ans\n,1\n", r"columns are"),
])
def test_bad_csvs_are_one_line(tmp_path, text, message):
    p = tmp_path / "x.csv"
    p.write_text(text)
    with pytest.raises(CompError, match=message or r"x.csv:3: ans '' is not a class 0-17"):
        read_submission(p)


@pytest.mark.parametrize("text", [
    "ans,ImageID\n4,a.jpg\n17,b.jpg\n",  # columns by name, in any order
    ",ImageID,ans\n0,a.jpg,4\n1,b.jpg,17\n",  # a CSV saved with pandas' index
    "ImageID,ans,conf\na.jpg,4,0.9\nb.jpg,17,0.4\n",  # other columns are not read
    "ImageID, ans\r\na.jpg, 4\r\nb.jpg,17\r\n",  # spaces around names and numbers, Windows line ends
    "\ufeffImageID,ans\na.jpg,4\nb.jpg,17.0\n",  # a byte-order mark; a whole number written as a float
])
def test_other_peoples_csvs_are_read_as_a_leaderboard_reads_them(tmp_path, text):
    p = tmp_path / "x.csv"
    p.write_text(text, encoding="utf-8", newline="")
    sub = read_submission(p)
    assert list(sub.ids) == ["a.jpg", "b.jpg"] and list(sub.ans) == [4, 17]


def test_written_files_follow_the_umask(tmp_path):
    csv = _set(tmp_path)
    mode = os.stat(csv).st_mode & 0o777
    assert mode == 0o666 & ~_umask() and mode & 0o044  # group/others can read when the umask allows


def _umask():
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_stale_temporaries_of_killed_writers_are_swept(tmp_path):
    csv = _set(tmp_path)
    dead = tmp_path / f".{csv.name}.999999999.abcd.tmp"  # no such process
    live = tmp_path / f".{csv.name}.{os.getpid()}.efgh.tmp"
    dead.write_text("half")
    live.write_text("being written")
    _set(tmp_path)
    assert not dead.exists() and live.exists()


# ------------------------------------------------------------------------------------------- ledger
def test_ledger_refuses_what_the_leaderboard_would(tiny_root, tmp_path):
    info = pd.read_csv(tiny_root / "eval" / "info.csv")
    ids = info["ImageID"].tolist()
    rng = np.random.default_rng(0)

    def sub(name, rows):
        p = rng.dirichlet(np.ones(18), len(rows))
        return write_submission(tmp_path / name, rows, p.argmax(1), p, Provenance(data=str(tiny_root)))
    folder = tmp_path / "ledger"
    ok = sub("ok.csv", ids)
    cases = [(sub("short.csv", ids[:-1]), r"it lacks 1 of them"),
             (sub("extra.csv", ids + ["x.jpg"]), r"it has 1 that info.csv does not \(e.g. x.jpg\)"),
             (sub("order.csv", ids[::-1]), r"not in .*info.csv's order")]
    for path, message in cases:
        with pytest.raises(CompError, match=message):
            ledger.add(path, 0.5, folder=folder)
    assert not folder.exists()  # nothing written
    ledger.add(ok, 0.5, folder=folder)
    with pytest.raises(CompError, match=r"the same file is already in the ledger as ok.csv"):
        ledger.add(ok, 0.52, folder=folder)
    other = tmp_path / "elsewhere"
    other.mkdir()
    copy = other / "ok2.csv"
    copy.write_bytes(ok.read_bytes())
    with pytest.raises(CompError, match=r"already in the ledger"):
        ledger.add(copy, 0.5, folder=folder)
    assert len(read_ledger(folder)) == 1
    # without an eval set at hand, the first entry's rows are the standard
    p = rng.dirichlet(np.ones(18), len(ids) - 1)
    loose = write_submission(tmp_path / "loose.csv", ids[:-1], p.argmax(1), p)
    with pytest.raises(CompError, match=r"ImageIDs differ from ok.csv's"):
        ledger.add(loose, 0.4, folder=folder)
    p = rng.dirichlet(np.ones(18), len(ids))
    turned = write_submission(tmp_path / "turned.csv", ids[::-1], p.argmax(1), p)  # says which order, and how to check
    with pytest.raises(CompError, match=r"not in ok.csv's order \(the ledger's first entry; with --data ROOT, eval/info.csv"):
        ledger.add(turned, 0.4, folder=folder)


def test_estimate_without_reference_accuracy_prints_none(tmp_path):
    a, b = _set(tmp_path, "a.csv", seed=0), _set(tmp_path, "b.csv", seed=1)
    r = CliRunner().invoke(app, ["estimate", str(a), "--ref", str(b), "--ref-f1", "0.5", "--samples", "200"])
    assert r.exit_code == 0, r.output
    assert "0.00%" not in r.output and "no reference accuracy given" in r.output


def test_the_json_records_what_it_commits(tmp_path):
    csv = _set(tmp_path)
    prov = json.loads(meta_path(csv).read_text())
    assert prov["kind"] == "predict" and prov["files"]["csv"] == submission.sha256_file(csv)


# ------------------------------------------------------------------------------------------- fuzzing
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_json = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=12)
_provenance_keys = st.sampled_from(["kind", "method", "inputs", "weights", "runs", "bias", "ckpt", "tta", "files",
                                    "answers_from_probs", "ensemble", "data", "stats", "version", "weighting"])


def _no_traceback(result) -> None:
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


@FUZZ
@given(text=st.text(alphabet=st.sampled_from(list("ImageIDans,0123456789.-\n\r\"x é\t;")), max_size=120))
def test_fuzzed_csvs_never_crash_and_write_nothing(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("csv")
    good = _set(d, "good.csv")
    bad = d / "bad.csv"
    bad.write_text(text)
    out = d / "out.csv"
    r = CliRunner().invoke(app, ["ensemble", str(bad), str(good), "-m", "vote", "-o", str(out)])
    _no_traceback(r)
    if r.exit_code == 2:
        assert not out.exists()
    r = CliRunner().invoke(app, ["submissions", "add", str(bad), "--public-f1", "0.5", "--dir", str(d / "ledger")])
    _no_traceback(r)
    if r.exit_code == 2:
        assert not (d / "ledger").exists()


@FUZZ
@given(shape=st.sampled_from([(20, 18), (20, 17), (19, 18), (20,), (20, 18, 1), (0, 18)]),
       dtype=st.sampled_from(["f4", "f8", "f2", "i8", "u1", "?", "U3", "c8"]),
       fill=st.sampled_from(["dirichlet", "nan", "inf", "neg", "zeros", "scaled", "shuffled"]))
def test_fuzzed_probabilities_are_accepted_only_when_valid(tmp_path_factory, shape, dtype, fill):
    d = tmp_path_factory.mktemp("npy")
    csv = _set(d)
    meta_path(csv).unlink()
    rng = np.random.default_rng(1)
    p = np.load(probs_path(csv))
    arr = {"dirichlet": p, "nan": np.full_like(p, np.nan), "inf": p + np.inf, "neg": p - 1, "zeros": p * 0,
           "scaled": p * 3, "shuffled": rng.permuted(p, axis=1)}[fill]
    arr = np.resize(arr, shape)
    try:
        arr = arr.astype(dtype)
    except (ValueError, TypeError, OverflowError):
        return
    np.save(probs_path(csv), arr)
    r = CliRunner().invoke(app, ["ensemble", str(csv), str(_set(d, "other.csv", seed=2)), "-m", "soft", "-o",
                                 str(d / "b.csv")])
    _no_traceback(r)
    valid = arr.shape == (20, 18) and arr.dtype.kind == "f" and fill == "dirichlet"
    assert (r.exit_code == 0) == valid or (fill == "dirichlet" and dtype == "f2"), (shape, dtype, fill, r.output)


@FUZZ
@given(data=st.one_of(_json, st.dictionaries(_provenance_keys, _json, max_size=5)))
def test_fuzzed_provenance_never_crashes(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("json")
    csv = _set(d)
    meta_path(csv).write_text(json.dumps(data))
    r = CliRunner().invoke(app, ["estimate", str(csv), "--ref", str(_set(d, "ref.csv", seed=3)), "--ref-f1", "0.5",
                                 "--samples", "50", "--json"])
    _no_traceback(r)


@FUZZ
@given(text=st.one_of(
    st.text(max_size=80),
    st.dictionaries(st.sampled_from(["data", "model", "optim", "train", "loss", "augment", "sched", "name", "x"]),
                    st.one_of(_json, st.dictionaries(st.sampled_from(["size", "lr", "epochs", "name", "terms", "preset",
                                                                       "workers", "ops", "head", "fold"]), _json,
                                                     max_size=3)), max_size=3).map(json.dumps)))
def test_fuzzed_pipelines_end_in_one_clear_error(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("yaml")
    p = d / "p.yaml"
    p.write_text(text)
    out = d / "run"
    r = CliRunner().invoke(app, ["train", "-p", str(p), "--data", str(d / "nowhere"), "-o", str(out)])
    _no_traceback(r)
    assert r.exit_code == 2 and not out.exists()


# --------------------------------------------------------------------------------------------- data
def test_data_check_finds_implausible_ages_empty_images_and_ragged_rows(tiny_copy):
    from comp.data.check import check_dataset

    csv = tiny_copy / "train" / "train.csv"
    rows = csv.read_text().splitlines()
    first = rows[1].split(",")
    folder = tiny_copy / "train" / "images" / first[4]
    new_name = f"{first[0]}_{first[1]}_{first[2]}_999"
    folder.rename(folder.with_name(new_name))
    rows[1] = ",".join([first[0], first[1], first[2], "999", new_name])
    csv.write_text("\n".join(rows) + "\n")
    second = rows[2].split(",")
    (tiny_copy / "train" / "images" / second[4] / "normal.jpg").write_bytes(b"")
    problems = [f"{p.where}: {p.kind}" for p in check_dataset(tiny_copy).problems]
    assert any("train.csv:2" in p and "age 999 is not a plausible age" in p for p in problems), problems
    assert any(p.endswith("normal.jpg: empty image file (0 bytes)") for p in problems), problems
    csv.write_text(csv.read_text().replace(rows[3], rows[3] + ",extra"))
    problems = [f"{p.where}: {p.kind}" for p in check_dataset(tiny_copy).problems]
    assert any("train.csv:4: row has 6 fields, the header 5" in p for p in problems), problems


def test_a_corrupt_image_read_in_a_worker_is_one_line(tiny_copy, tmp_path):
    victim = next((tiny_copy / "train" / "images").iterdir()) / "mask1.jpg"
    victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = CliRunner().invoke(app, ["train", "--data", str(tiny_copy), "-o", str(tmp_path / "run"), "--set",
                                 "data.cache=none", "--set", "data.workers=1", *sum((["--set", o] for o in [
                                     "model.name=resnet10t", "data.size=[24,32]", "data.folds=2", "train.epochs=1",
                                     "train.trackers=[]", "train.batch_size=8"]), [])])
    assert r.exit_code == 2, r.output
    err = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "mask1.jpg: unreadable or corrupt image" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "run").exists()  # nothing worth resuming was made
