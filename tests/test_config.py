"""The config refuses what it cannot use with one line naming the file/option and the key, and a run
checks every name it will resolve before it writes anything."""
import math

import pytest
from typer.testing import CliRunner

from comp.cli import app
from comp.config import load_config
from comp.errors import CompError
from comp.train.engine import train
from comp.train.factory import SCHEDULES, check_config

from .conftest import tiny_cfg


@pytest.mark.parametrize("override, message", [
    ("data.size=abcxdef", r"data.size='abcxdef': expected WIDTHxHEIGHT like 96x128"),
    ("data.size=64x", r"data.size='64x': expected WIDTHxHEIGHT"),
    ("data.size=0x0", r"data.size must be width and height of at least 8 px each, got \[0, 0\]"),
    ("data.size=[64]", r"data.size must be width and height"),
    ("optim.lr=-1", r"optim.lr=-1.0 must be more than 0"),
    ("optim.lr=.nan", r"optim.lr=nan must be a finite number"),
    ("optim.lr=.inf", r"optim.lr=inf must be a finite number"),
    ("data.workers=-1", r"data.workers=-1 must be at least 0"),
    ("train.epochs=0", r"train.epochs=0 must be at least 1"),
    ("train.ema_decay=1", r"train.ema_decay=1.0 must be less than 1"),
    ("mixup.prob=1.5", r"mixup.prob=1.5 must be at most 1"),
    ("loss.terms={ce: .nan}", r"loss.terms.ce=nan must be a finite number"),
    ("loss.terms={ce: -1}", r"loss.terms=.* needs non-negative finite weights"),
    ("data.old_from=20", r"data.young_below=30 must be below data.old_from=20"),
    ("data.fold=7", r"data.fold=7 must lie in 0..4"),
    ("train.epochs=many", r"train.epochs must be int, got 'many'"),
    ("train.epoch=3", r"unknown key train.epoch; valid keys of train: epochs"),
    ("optim.lr={a: [1", r"--set optim.lr=\{a: \[1: the value is not valid YAML"),
])
def test_bad_values_are_one_line(override, message):
    with pytest.raises(CompError, match=message) as e:
        load_config(None, [override])
    assert len(e.value.lines) == 1 and e.value.lines[0].startswith(("defaults + --set", "--set"))


def test_sizes_read_as_width_by_height_never_as_hex():
    assert load_config(None, ["data.size=64x80"]).data.size == [64, 80]
    assert load_config(None, ["data.size=[64, 80]"]).data.size == [64, 80]
    assert load_config(None, ["optim.lr=3e-4"]).optim.lr == pytest.approx(3e-4)
    assert math.isclose(load_config(None, ["optim.lr=1"]).optim.lr, 1.0)  # ints become floats


def test_the_documented_no_is_not_read_as_false(tmp_path):
    # YAML 1.1 turns `no` into False; train.mixed_precision's off value is the string "no"
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    p = tmp_path / "fp32.yaml"
    p.write_text("train:\n  mixed_precision: no\n")
    assert load_config(p).train.mixed_precision == "no"


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", r"bad.yaml: a pipeline is a mapping of sections .*not a list"),
    ("model:\n  name: resnet18\n  name: resnet34\n", r"bad.yaml:3: not valid YAML \(key 'name' appears twice\)"),
    ("model:\n  name: [resnet18\n", r"bad.yaml:3: not valid YAML"),
    ("model: resnet18\n", r"bad.yaml: model must be a mapping of keys"),
])
def test_bad_pipeline_files(tmp_path, text, message):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(CompError, match=message):
        load_config(p)


def test_binary_pipeline_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(CompError, match=r"bad.yaml: not a text file"):
        load_config(p)


@pytest.mark.parametrize("override, message", [
    ("model.head=twoheads", r"model.head='twoheads' is not a known head; choose one of multiclass, multitask"),
    ("loss.terms={dice: 1}", r"loss.terms='dice' is not a known loss; choose one of ce, focal, soft_f1"),
    ("augment.preset=heavy", r"augment.preset='heavy' is not a known augmentation preset; choose one of none, light"),
    ("augment.ops=[{HorizontalFlipp: {p: 0.5}}]", r"'HorizontalFlipp' is not an albumentations transform"),
    ("sched.name=linear", r"sched.name='linear' is not a known LR schedule; choose one of " + ", ".join(SCHEDULES)),
    ("predict.tta=rot90", r"predict.tta='rot90' is not a known TTA view set"),
    ("model.name=resnet_18", r"model.name='resnet_18' is not a timm model"),
    ("optim.name=adamm", r"optim.name='adamm'; choose one of"),
    ("data.cache=ssd", r"data.cache='ssd'; choose one of disk, memory, none"),
    ("data.crop=retinaface", r"data.crop='retinaface' is not a known face detector"),
    ("model.weights=/no/such.pth", r"model.weights=/no/such.pth: file not found"),
    ("train.mixed_precision=fp32", r"train.mixed_precision='fp32'; choose one of auto, no, fp16, bf16"),
    ("model.freeze=6", r"model.freeze=6: resnet18 has 6 layer groups \(stem, stages, classifier\); freeze at most 5"),
])
def test_every_name_is_checked_against_its_registry(override, message):
    with pytest.raises(CompError, match=message):
        check_config(load_config(None, [override]))


def test_all_problems_at_once():
    with pytest.raises(CompError) as e:
        check_config(load_config(None, ["model.head=x", "sched.name=y", "loss.terms={z: 1}"]))
    assert len(e.value.lines) == 3


@pytest.mark.parametrize("typo", ["loss.terms={cee: 1}", "augment.ops=[Blurr]", "model.name=resnet1888"])
def test_a_typo_writes_no_run_folder(tiny_root, tmp_path, typo):
    out = tmp_path / "run"
    with pytest.raises(CompError):
        train(tiny_cfg(tiny_root, typo), out)
    assert not out.exists()
    train(tiny_cfg(tiny_root, "train.epochs=1"), out)  # the corrected rerun needs no --force
    assert (out / "fold0" / "done").is_file()


def test_cli_prints_brackets_of_messages_verbatim():
    # rich markup would eat "[0, 0]" from the message
    r = CliRunner().invoke(app, ["train", "--set", "data.size=0x0"])
    assert r.exit_code == 2 and "got [0, 0]" in r.output and "Traceback" not in r.output
