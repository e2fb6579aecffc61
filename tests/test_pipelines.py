from pathlib import Path

import pytest
import timm

from comp.config import load_config

PIPELINES = sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.yaml"))


def test_the_shipped_pipelines_are_there():
    assert {p.stem for p in PIPELINES} >= {"demo", "cpu", "baseline", "convnext_mixup", "effnet_cutmix"}


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_pipeline_is_valid(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert timm.is_model(cfg.model.name.split(".")[0])
    if path.stem in ("demo", "cpu"):  # the CPU recipes must run offline from scratch
        # fp32, or bf16 only where a CPU runs it natively (auto): never emulated bf16, 10-20x slower
        assert cfg.model.weights == "none" and cfg.train.mixed_precision in ("no", "auto")
