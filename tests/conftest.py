import os
import shutil
from pathlib import Path

# Tests never touch the network and never draw progress bars.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("COMP_NO_PROGRESS", "1")

import pytest  # noqa: E402

UTKMASK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "utkmask"
needs_utkmask = pytest.mark.skipif(not (UTKMASK / "train" / "train.csv").is_file(),
                                   reason="../shared/datasets/utkmask is not here (a user's clone)")


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A small synthetic dataset root, shared read-only by the tests: 12 train people, 4 eval people."""
    from comp.data.synth import write_synth

    return write_synth(tmp_path_factory.mktemp("synth") / "tiny", people=12, eval_people=4, size=(24, 32), seed=1).root


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private copy of `tiny_root` for tests that break it."""
    return Path(shutil.copytree(tiny_root, tmp_path / "root"))


TINY = ["model.name=resnet10t", "data.size=[24,32]", "data.folds=2", "data.workers=0", "data.cache=memory",
        "train.batch_size=16", "train.epochs=2", "train.trackers=[]", "predict.batch_size=64", "augment.preset=none",
        "optim.lr=0.003", "sched.warmup_epochs=0"]


def tiny_cfg(root, *extra):
    from comp.config import load_config

    return load_config(None, TINY + [f"data.root={root}", *extra])


@pytest.fixture(scope="session")
def tiny_runs(tiny_root, tmp_path_factory) -> tuple[Path, Path]:
    """Two finished 2-fold runs on tiny_root (a multiclass and a multitask one), with OOF files."""
    from comp.train.engine import train

    base = tmp_path_factory.mktemp("runs")
    a = train(tiny_cfg(tiny_root, "name=a"), base / "a", folds=[0, 1]).out
    b = train(tiny_cfg(tiny_root, "name=b", "model.head=multitask", "train.seed=1"), base / "b", folds=[0, 1]).out
    return a, b
