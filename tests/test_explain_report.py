import base64
import re

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from typer.testing import CliRunner

from comp import explain as X
from comp import runs
from comp.cli import app
from comp.data import labels as L
from comp.data.cache import load_resized
from comp.data.loader import Normalizer
from comp.errors import CompError
from comp.models import Head, normalizer
from comp.report import make_report
from comp.submission import write_submission

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _val_images(run, n=5):
    model, head, cfg = runs.load_run(run, 0)
    df = runs.train_frame(cfg)
    paths = df[df["fold"] == 0]["path"].tolist()[:n]
    return model, head, cfg, np.stack([load_resized(p, tuple(cfg.data.size)) for p in paths])


@pytest.mark.parametrize("which", [None, "age"])
@pytest.mark.parametrize("kind", [0, 1], ids=["multiclass", "multitask"])
def test_cam_maps_have_the_image_size_and_lie_in_unit_range(tiny_runs, kind, which):
    model, head, cfg, images = _val_images(tiny_runs[kind])
    normalize = normalizer(cfg, model)
    # layer3 still holds a 2x1 map at 24x32 (layer4, the automatic choice, is 1x1 there)
    cams = X.grad_cam(model, head, images, normalize, which, layer="layer3")
    assert cams.maps.shape == images.shape[:3] and cams.maps.dtype == np.float32
    assert cams.maps.min() >= 0 and cams.maps.max() <= 1
    # the probabilities shown are the head's marginal of the model's 18-class probabilities
    with torch.no_grad():
        p18 = head.probs(model(normalize(torch.from_numpy(images).permute(0, 3, 1, 2)))).numpy()
    expected = p18 if which is None else L.heads_from_probs(p18)[which]
    assert np.allclose(cams.probs, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["multiclass", "multitask"])
def test_head_log_probs_are_the_marginals(kind):
    head = Head(kind)
    logits = torch.randn(7, head.n_outputs)
    p18 = head.probs(logits).numpy()
    for h, marginal in L.heads_from_probs(p18).items():
        assert np.allclose(X.log_probs(head, logits, h).exp().numpy(), marginal, atol=1e-5)
    assert np.allclose(X.log_probs(head, logits).exp().numpy(), p18, atol=1e-5)


@pytest.mark.parametrize("name, kwargs, layer", [  # timm's test_* models: the real architectures, tiny
    ("resnet10t", {}, "layer4.0"),
    ("test_convnext", {}, "stages.3"),
    ("mobilenetv3_small_050", {}, "blocks.5"),
    ("test_efficientnet", {}, "conv_head"),
    ("test_vit", {"img_size": (64, 48)}, "blocks.5.norm1"),
])
def test_target_layer_is_found_for_common_families(name, kwargs, layer):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=18, **kwargs).eval()
    assert X.auto_layer_name(model) == layer
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 48, 3), dtype=np.uint8)
    cams = X.grad_cam(model, Head("multiclass"), images, Normalizer([0.5] * 3, [0.25] * 3))
    assert cams.layer == layer and cams.maps.shape == (2, 64, 48)
    assert (cams.maps.std(axis=(1, 2)) > 0).all()  # a real map, not a constant
    assert cams.maps.min() >= 0 and cams.maps.max() <= 1


def test_a_bad_layer_is_a_clear_error(tiny_runs):
    model, head, cfg, images = _val_images(tiny_runs[0], 2)
    normalize = normalizer(cfg, model)
    with pytest.raises(CompError, match="no such module.*layer4"):
        X.grad_cam(model, head, images, normalize, layer="layer9")
    with pytest.raises(CompError, match="not a spatial map"):
        X.grad_cam(model, head, images, normalize, layer="fc")
    with pytest.raises(CompError, match="--layer"):
        X.resolve_layer(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_labels_come_from_train_folder_names(tmp_path):
    bins = L.AgeBins(30, 60)
    assert X.label_from_path(tmp_path / "000007_female_Asian_45" / "incorrect_mask.jpg", bins) == L.encode(1, 1, 1)
    assert X.label_from_path(tmp_path / "faces" / "me.jpg", bins) == -1


def test_explain_command_writes_grids(tiny_root, tiny_runs, tmp_path):
    person = sorted((tiny_root / "train" / "images").iterdir())[0]
    eval_image = sorted((tiny_root / "eval" / "images").iterdir())[0]
    cases = {"val": [str(tiny_runs[0]), "--sample", "5", "--layer", "layer3"],
             "head": [str(tiny_runs[1]), "--sample", "6", "--head", "gender"],
             "files": [str(tiny_runs[0]), "--images", str(person), "--images", str(eval_image)]}
    for name, args in cases.items():
        out = tmp_path / name
        result = CliRunner().invoke(app, ["explain", *args, "-o", str(out)])
        assert result.exit_code == 0, result.output
        pngs = sorted(out.glob("gradcam_*.png"))
        assert pngs and all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    on_eval = CliRunner().invoke(app, ["explain", str(tiny_runs[0]), "--eval", "--sample", "3", "-o", str(tmp_path / "eval")])
    assert on_eval.exit_code == 0 and "truth unknown" in on_eval.output
    bad = CliRunner().invoke(app, ["explain", str(tiny_runs[0]), "--head", "race", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--head race" in bad.output


def _check_report(out, sections):
    page = (out / "index.html").read_text()
    for s in sections:
        assert f'<section id="{s}">' in page
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" data-file="([^"]+)">', page)
    assert len(images) == page.count("<img ")  # every image is embedded
    for data, name in images:
        assert base64.b64decode(data) == (out / name).read_bytes()  # and written beside the page
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert {name for _, name in images} == {p.name for p in out.glob("*.png")}
    return page


def test_report_of_a_multiclass_run_with_a_submission(tiny_root, tiny_runs, tmp_path):
    truth = pd.read_csv(tiny_root / "eval_truth.csv", dtype={"ImageID": str})
    ans = np.where(np.arange(len(truth)) % 3 == 0, 0, truth["ans"].to_numpy())  # two thirds right
    sub = write_submission(tmp_path / "sub.csv", truth["ImageID"], ans)
    r = make_report(tiny_runs[0], tmp_path / "report", sub, tiny_root / "eval_truth.csv", gallery=5)
    page = _check_report(r.out, ["summary", "curves", "confusion", "f1", "counts", "submission", "mistakes"])
    for name in ("curves.png", "confusion_18.png", "confusion_mask.png", "confusion_gender.png", "confusion_age.png",
                 "f1_per_class.png", "class_counts.png", "submission_confusion_18.png", "mistakes_gradcam_01.png"):
        assert (r.out / name).is_file(), name
    assert set(r.submission) == {"public", "private", "all"} and "OOF (all folds)" in page
    assert 0 < r.mistakes_shown <= 5


def test_report_command_on_a_multitask_run(tiny_runs, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(tiny_runs[1]), "-o", str(out), "--gallery", "3"])
    assert result.exit_code == 0, result.output
    _check_report(out, ["summary", "curves", "confusion", "f1", "counts", "mistakes"])
    again = CliRunner().invoke(app, ["report", str(tiny_runs[1]), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
