"""`comp sweep`: workers sharing one study, a killed worker's trial retried, pruning, bad space files."""
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from comp import runs, sweep
from comp.cli import app
from comp.config import load_config, read_run_config, save_config
from comp.errors import CompError
from comp.train import engine

from .conftest import tiny_cfg

REPO = Path(__file__).resolve().parents[1]
SPACE = "optim.lr: {log: [1e-4, 1e-2]}\naugment.preset: {choice: [none, light]}\n"  # 1e-4: a string to YAML 1.1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster on one thread on a shared 2-core box (and so do the workers, by env)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pipeline(tiny_root, tmp_path_factory) -> Path:
    """The tiny recipe as a pipeline file (a sweep starts from one)."""
    p = tmp_path_factory.mktemp("pipe") / "tiny.yaml"
    save_config(tiny_cfg(tiny_root, "name=tiny"), p)
    return p


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def worker(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """`python -m comp sweep ...` in its own process, the way a second GPU or machine runs it."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COMP_NO_PROGRESS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "comp", "sweep", *args], cwd=cwd, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """A suite started in the background (`make test &`) inherits SIGINT ignored, and Python then never turns
    it into KeyboardInterrupt: give the worker the default a terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def trials_of(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=sweep.default_storage(out)).get_trials()


@pytest.fixture(scope="module")
def two_workers(pipeline, tiny_root, tmp_path_factory):
    """Two worker processes started at once with the same command on a new study share 4 trials."""
    base = tmp_path_factory.mktemp("two")
    out = base / "sweeps" / "two"
    space = write(base / "space.yaml", SPACE)
    logs = [base / f"worker{i}.log" for i in (0, 1)]
    args = ["-p", str(pipeline), "--space", str(space), "--data", str(tiny_root), "--trials", "4", "--study", "two",
            "--out", str(out), "--set", "train.epochs=1", "--heartbeat", "2"]
    procs = [worker(args, base, log) for log in logs]  # both find no study: one creates it, the other joins
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    return out, space, procs, logs


def test_two_workers_finish_n_trials_between_them_none_lost_or_run_twice(two_workers, pipeline, tiny_root):
    out, _, procs, logs = two_workers
    trials = trials_of(out, "two")
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state for t in ran] == [TrialState.COMPLETE] * 4, [(t.number, t.state) for t in trials]
    assert all(t.state == TrialState.FAIL for t in trials if t.user_attrs.get("surplus"))  # never counted
    dirs = [t.user_attrs["run_dir"] for t in ran]
    assert len(set(dirs)) == 4 and sorted(dirs) == sorted(str(out / "trials" / f"{t.number:04d}") for t in ran)
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in ran}
    assert workers == {str(p.pid) for p in procs}, "both workers should have run trials"
    baseline = [t for t in ran if t.user_attrs.get("baseline")]
    assert len(baseline) == 1 and baseline[0].params == {"optim.lr": 0.003, "augment.preset": "none"}
    for t in ran:  # each trial is a finished comp run, rebuilt exactly by its recorded command line
        d = Path(t.user_attrs["run_dir"])
        assert runs.trained_folds(d) == [0] and (d / "fold0" / "best.safetensors").is_file()
        assert t.value == pytest.approx(runs.read_done(d / "fold0")["best"]["f1"])
        argv = shlex.split(t.user_attrs["command"])
        assert argv[:8] == ["comp", "train", "-p", str(pipeline), "--data", str(tiny_root), "--out", str(d)]
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        cfg = load_config(argv[3], sets + [f"data.root={argv[5]}"])
        assert cfg.flat() == read_run_config(d).flat()
        assert cfg.optim.lr == pytest.approx(t.params["optim.lr"]) and cfg.train.epochs == 1


def test_show_reports_best_command_and_plots_and_keep_thins_the_rest(two_workers):
    out, _, _, _ = two_workers
    trials = [t for t in trials_of(out, "two") if t.state == TrialState.COMPLETE]
    best = max(trials, key=lambda t: (t.value, -t.number))
    r = CliRunner().invoke(app, ["sweep", "show", "two", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"best: trial {best.number}, F1 {best.value:.4f}" in r.output
    assert best.user_attrs["command"].replace(" ", "") in r.output.replace("\n", "").replace(" ", "")
    assert "optuna-dashboard" in r.output
    for name in ("history", "parallel", "importances"):
        png = out / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert all((Path(t.user_attrs["run_dir"]) / "fold0" / "best.safetensors").is_file() for t in trials)

    r = CliRunner().invoke(app, ["sweep", "show", "two", "--out", str(out), "--keep", "best:1", "--no-plots"])
    assert r.exit_code == 0, r.output
    for t in trials:
        fold = Path(t.user_attrs["run_dir"]) / "fold0"
        kept = t.number == best.number
        assert (fold / "best.safetensors").is_file() == kept and bool(list(fold.glob("state-*"))) == kept
        assert (fold / "metrics.csv").is_file() and (fold / "val_probs.npy").is_file()  # the record stays


def test_a_worker_started_differently_cannot_join(two_workers, pipeline, tiny_root):
    out, space, _, _ = two_workers
    other = write(space.with_name("other.yaml"), "optim.lr: {log: [1e-4, 1e-1]}\n")
    before = len(trials_of(out, "two"))
    r = CliRunner().invoke(app, ["sweep", "-p", str(pipeline), "--space", str(other), "--data", str(tiny_root),
                                 "--trials", "6", "--study", "two", "--out", str(out), "--set", "train.epochs=1"])
    assert r.exit_code == 2 and "was started differently: its space is" in r.output, r.output
    assert len(trials_of(out, "two")) == before


def worker_after_first_epoch(pipeline: Path, tiny_root: Path, tmp_path: Path, study: str):
    """A worker process on a new 3-epoch, 1-trial study, returned once its trial has saved its first epoch."""
    out = tmp_path / "sweeps" / study
    space = write(tmp_path / "space.yaml", "optim.lr: {log: [1e-4, 1e-2]}\n")
    sweep.run(pipeline, space, tiny_root, n_trials=0, study=study, out=out, sets=["train.epochs=3"],
              pruner="none", heartbeat=2)
    log = tmp_path / "a.log"
    a = worker(["--study", study, "--out", str(out), "--data", str(tiny_root), "--trials", "1"], tmp_path, log)
    metrics = out / "trials" / "0000" / "fold0" / "metrics.csv"
    deadline = time.time() + 240
    while not (metrics.is_file() and len(runs.read_metrics(metrics.parent)) >= 1):
        assert a.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    return out, a, log, metrics


def test_a_killed_workers_trial_is_retried_and_resumed_by_the_next_worker(pipeline, tiny_root, tmp_path):
    out, a, log, metrics = worker_after_first_epoch(pipeline, tiny_root, tmp_path, "kill")
    a.send_signal(signal.SIGKILL)
    a.wait()
    (killed,) = trials_of(out, "kill")
    assert killed.state == TrialState.RUNNING and len(runs.read_metrics(metrics.parent)) < 3  # mid-trial

    r = sweep.run(study="kill", out=out, data=tiny_root, n_trials=1)  # the next worker
    trials = trials_of(out, "kill")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE] and r.finished == 1
    retry = trials[1]
    assert retry.params == killed.params and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"] == str(out / "trials" / "0000")
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    assert retry.user_attrs["resumed_after_epoch"] >= 1  # carried on from the dead worker's epochs
    assert list(runs.read_metrics(metrics.parent)["epoch"]) == [1, 2, 3]
    assert sorted(retry.intermediate_values) == [1, 2, 3]  # the pruner saw the whole curve
    assert runs.trained_folds(out / "trials" / "0000") == [0]
    shown = sweep.show("kill", out=out, plots=False)
    assert shown.rows[0].note == "baseline; worker died; retried as 1"


def test_ctrl_c_stops_a_worker_with_one_line_and_its_trial_is_not_retried(pipeline, tiny_root, tmp_path):
    out, a, log, metrics = worker_after_first_epoch(pipeline, tiny_root, tmp_path, "int")
    a.send_signal(signal.SIGINT)
    assert a.wait(timeout=60) != 0
    said = log.read_text()
    assert "interrupted; the running trial is marked failed" in said
    assert "Traceback" not in said and "failed with parameters" not in said, said  # no Optuna traceback
    (stopped,) = trials_of(out, "int")
    assert stopped.state == TrialState.FAIL

    sweep.run(study="int", out=out, data=tiny_root, n_trials=1)  # the next worker starts a new trial
    trials = trials_of(out, "int")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "retry_of" not in trials[1].user_attrs


def test_pruning_stops_a_trial_whose_epoch_f1_is_below_the_median(pipeline, tiny_root, tmp_path, monkeypatch):
    # Validation F1 made a known function of the lr, so the curves are known: 0.75 at lr 3e-3 (the baseline),
    # 0 at 1e-4, 1 at 1e-2.
    import math

    real = engine.validate

    def validate(f):
        row, probs, rows = real(f)
        return {**row, "f1": (math.log10(f.cfg.optim.lr) + 4) / 2}, probs, rows
    monkeypatch.setattr(engine, "validate", validate)
    out = tmp_path / "sweeps" / "prune"
    space = write(tmp_path / "space.yaml", "optim.lr: {log: [1e-4, 1e-2]}\n")
    sweep.run(pipeline, space, tiny_root, n_trials=0, study="prune", out=out, sets=["train.epochs=3"],
              pruner="median", prune_startup=1, prune_warmup=1)
    study = optuna.load_study(study_name="prune", storage=sweep.default_storage(out))
    study.enqueue_trial({"optim.lr": 1e-4})
    study.enqueue_trial({"optim.lr": 1e-2})
    r = sweep.run(study="prune", out=out, data=tiny_root, n_trials=3)
    t = {x.params["optim.lr"]: x for x in r.ran}
    base, low, high = t[0.003], t[1e-4], t[1e-2]
    assert base.state == TrialState.COMPLETE and high.state == TrialState.COMPLETE
    assert low.state == TrialState.PRUNED and low.last_step == 1, low
    low_fold = Path(low.user_attrs["run_dir"]) / "fold0"
    assert len(runs.read_metrics(low_fold)) == 1  # stopped after its first epoch, not 3
    assert runs.committed_state(low_fold) is not None and not (low_fold / "done").exists()  # a resumable comp run
    assert len(runs.read_metrics(Path(high.user_attrs["run_dir"]) / "fold0")) == 3
    assert r.best.number == high.number and r.best.value == pytest.approx(1.0)


BAD_SPACES = [
    ("optim.lr: {log: [1e-4, 1e-2]\n", "not valid YAML"),
    ("- optim.lr\n", "a space is a mapping of dotted config keys to distributions, not a list"),
    ("", "the space is empty"),
    ("optim.lrr: {log: [1e-4, 1e-2]}\n", "optim.lrr: 0.0001 is refused by the config: unknown key optim.lrr"),
    ("optim.lr: {loguniform: [1e-4, 1e-2]}\n", "unknown distribution 'loguniform'; choose one of log, float, int, choice"),
    ("optim: {lr: {log: [1e-4, 1e-2]}}\n", "optim: unknown distribution 'lr'; write dotted keys, e.g. optim.lr"),
    ("optim.lr: {log: [0, 1e-2]}\n", "optim.lr: log: the low end must be above 0"),
    ("train.epochs: {int: [8, 4]}\n", "train.epochs: int: low 8 is above high 4"),
    ("train.epochs: {int: [4, 16.5]}\n", "train.epochs: int takes [low, high], two whole numbers"),
    ("augment.preset: {choice: []}\n", "augment.preset: choice takes a non-empty list"),
    ("optim.lr: 0.001\n", "optim.lr: expected one distribution"),
    ("train.ema_decay: {float: [0.9, 1.0]}\n", "train.ema_decay: 1.0 is refused by the config: train.ema_decay=1.0 must be less than 1"),
    ("train.epochs: {float: [4, 16]}\n", "train.epochs: 4.0 is refused by the config: train.epochs must be int"),
    ("augment.preset: {choice: [light, ultra]}\n", "augment.preset: 'ultra' is refused by the config: augment.preset='ultra' is not a known"),
    ("data.folds: {int: [2, 5]}\n", "data.folds: cannot be searched (it changes the validation folds)"),
    ("optim.weight_decay: {float: [0, 0.1]}\n", "optim.weight_decay: is also fixed with --set"),
]


@pytest.mark.parametrize("text,message", BAD_SPACES, ids=[m[:30] for _, m in BAD_SPACES])
def test_a_bad_space_file_gives_one_clear_line_exit_2_and_writes_nothing(pipeline, tiny_root, tmp_path, text, message):
    space = write(tmp_path / "bad.yaml", text)
    out = tmp_path / "sweeps" / "bad"
    r = CliRunner().invoke(app, ["sweep", "-p", str(pipeline), "--space", str(space), "--data", str(tiny_root),
                                 "--trials", "2", "--out", str(out), "--set", "optim.weight_decay=0.01"])
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(space) in lines[0], r.output
    assert message in " ".join(r.output.split()), r.output
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_a_sweep_with_no_space_value_checked_is_not_started(pipeline, tiny_root, tmp_path):
    """Every value a trial could draw is checked, not only the first: the last choice is the bad one."""
    space = write(tmp_path / "s.yaml", "loss.terms: {choice: [{ce: 1.0}, {focal: 1.0}, {dice: 1.0}]}\n")
    with pytest.raises(CompError, match=r"loss.terms: \{'dice': 1.0\} is refused by the config: loss.terms=.*dice"):
        sweep.run(pipeline, space, tiny_root, n_trials=1, out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_choice_values_reach_the_config_as_written():
    space = sweep.parse_space(yaml.safe_load("loss.terms: {choice: [{ce: 1.0}, {focal: 0.5, ce: 0.5}]}\n"
                                             "name: {choice: ['yes', 'no']}\n"
                                             "optim.lr: {log: [1e-5, 1e-3]}\n"), "s.yaml", None, [])
    study = optuna.create_study()
    study.enqueue_trial({"loss.terms": "{focal: 0.5, ce: 0.5}", "name": "yes", "optim.lr": 1e-5})
    values = space.suggest(study.ask())
    assert values == {"loss.terms": {"focal": 0.5, "ce": 0.5}, "name": "yes", "optim.lr": 1e-5}
    cfg = load_config(None, space.overrides(values))  # 'yes' stays a string, 1e-05 a float
    assert cfg.loss.terms == {"focal": 0.5, "ce": 0.5} and cfg.name == "yes" and cfg.optim.lr == 1e-5


def test_keep_and_folds_specs_are_checked():
    assert sweep.parse_keep("best:3") == 3
    for bad in ("best", "best:0", "top:2"):
        with pytest.raises(CompError, match="expected best:K"):
            sweep.parse_keep(bad)
    assert sweep.parse_folds("all", 3) == [0, 1, 2] and sweep.parse_folds("2,0", 3) == [0, 2]
    with pytest.raises(CompError, match="fold 5 does not exist"):
        sweep.parse_folds("5", 3)


def test_a_fresh_trial_started_when_the_study_is_full_gives_way_but_a_retry_never_does():
    study = optuna.create_study()
    first, second, third = study.ask(), study.ask(), study.ask()
    assert not sweep._surplus(study, first, 2) and not sweep._surplus(study, second, 2)
    assert sweep._surplus(study, third, 2)  # two workers both started "the last" trial: the later gives way
    study.tell(second, state=TrialState.FAIL)  # a dead worker's trial ...
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"failed_trial": 1}))
    assert sweep._surplus(study, third, 2)  # ... whose re-queued copy still counts ahead of fresh ones


def test_the_shipped_cpu_space_fits_the_cpu_recipe(tiny_root, tmp_path):
    pipes = REPO / "pipelines"
    space = sweep.load_space(pipes / "sweeps" / "cpu.yaml", pipes / "cpu.yaml",
                             ["train.epochs=4"])  # as its comment runs it: short trials, epochs not searched
    assert {"optim.lr", "augment.preset", "model.head"} <= set(space.dims) and "train.epochs" not in space.dims
    sweep.run(pipes / "cpu.yaml", pipes / "sweeps" / "cpu.yaml", tiny_root, n_trials=0, study="cpu",
              out=tmp_path, sets=["train.epochs=4"])
    (first,) = trials_of(tmp_path, "cpu")  # the recipe itself is queued first: the bar the search must clear
    assert first.user_attrs.get("baseline") and first.system_attrs["fixed_params"]["optim.lr"] == 0.003
    assert space.dims["optim.lr"].distribution.log


def test_a_worker_that_loses_the_race_to_create_the_study_joins_it(pipeline, tiny_root, tmp_path, monkeypatch):
    # On PostgreSQL two machines can both find no study and both create it (SQLite serialises this with a
    # file lock): the loser must join the winner's study, not fail.
    out = tmp_path / "sweeps" / "race"
    space = write(tmp_path / "space.yaml", SPACE)
    sweep.run(pipeline, space, tiny_root, n_trials=0, study="race", out=out)  # the winner
    real, calls = sweep._find_study, []

    def first_look_misses(storage, name):
        calls.append(name)
        return None if len(calls) == 1 else real(storage, name)
    monkeypatch.setattr(sweep, "_find_study", first_look_misses)
    sw, st = sweep.prepare("race", pipeline, space, tiny_root, out=out)
    assert len(calls) >= 2 and sw.settings.space == yaml.safe_load(SPACE)
    assert len(st.get_trials()) == 1  # the winner's baseline, queued once


@pytest.mark.skipif(not os.environ.get("COMP_TEST_STORAGE"), reason="set COMP_TEST_STORAGE=postgresql://... (or "
                    "mysql+pymysql://...) to run the workers on a database server")
def test_two_workers_share_a_study_on_a_database_server(pipeline, tiny_root, tmp_path):
    """The several-machines setup: the same command on two workers with --storage a server URL."""
    url, name = os.environ["COMP_TEST_STORAGE"], f"two-{os.getpid()}-{time.time_ns()}"
    space = write(tmp_path / "space.yaml", SPACE)
    args = ["-p", str(pipeline), "--space", str(space), "--data", str(tiny_root), "--trials", "4", "--study", name,
            "--storage", url, "--out", str(tmp_path / "sweep"), "--set", "train.epochs=1", "--heartbeat", "2"]
    procs = [worker(args, tmp_path, tmp_path / f"worker{i}.log") for i in (0, 1)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], "\n".join((tmp_path / f"worker{i}.log").read_text()[-3000:] for i in (0, 1))
    try:
        trials = [t for t in optuna.load_study(study_name=name, storage=url).get_trials()
                  if not t.user_attrs.get("surplus")]
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        assert len({t.user_attrs["run_dir"] for t in trials}) == 4
        assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials} == {str(p.pid) for p in procs}
        result = CliRunner().invoke(app, ["sweep", "show", name, "--storage", url, "--out", str(tmp_path / "sweep")])
        assert result.exit_code == 0 and "comp train" in result.output
    finally:
        optuna.delete_study(study_name=name, storage=url)
