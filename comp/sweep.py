"""`comp sweep`: a hyperparameter search over any pipeline key, that several worker processes or machines
extend together through one Optuna study in a database, with pruning of hopeless trials and retry of a
killed worker's trial.

    runs/sweeps/STUDY/sweep.db            the default storage (SQLite); any Optuna database URL for several machines
    runs/sweeps/STUDY/trials/0007/        trial 7: a normal comp run folder (predict / ensemble / report read it)
    runs/sweeps/STUDY/history.png ...     the plots of `comp sweep show`

A space file maps dotted config keys to a distribution (the names in DISTRIBUTIONS):

    optim.lr: {log: [1e-4, 3e-3]}
    augment.preset: {choice: [light, strong]}
    mixup.prob: {float: [0, 1]}
    train.epochs: {int: [4, 16]}

Every value a trial could draw is checked against the typed config and the registries (each choice, both
ends of each range) before the study is created, so a typo costs one line, not a night of failed trials.

A trial is `comp train` with `--set` overrides drawn by TPE; its score is the validation macro F1 of the
folds it trains (mean of each fold's best epoch), or the OOF F1 when it trains every fold. The pruner is
fed the validation F1 of each epoch of the *first* fold trained (step = epoch, 1-based); later folds of a
trial that survived the first are not pruned, so trials that differ in train.epochs still compare at
equal epochs.

Several workers: the first worker creates the study and stores the sweep's settings in it (pipeline,
space, fixed --set, folds, pruner, heartbeat); every worker that joins must agree with them. Each trial
beats a heartbeat; a trial whose worker died (SIGKILL, a crashed machine) goes stale after 3 heartbeats,
is marked failed and re-queued with the same parameters, and the next worker resumes its run folder
(`comp train --resume`). Workers stop when the study holds --trials finished (complete or pruned) trials;
a worker with nothing left to start waits for the others' running trials, so a trial left by a worker
killed near the end is still taken up.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from . import ui
from .config import Config, load_config, read_yaml
from .errors import CompError
from .fileio import atomic_path
from .registry import Registry

SWEEPS_DIR = Path("runs/sweeps")
DEFAULT_HEARTBEAT = 30  # seconds between heartbeats; a trial is stale after GRACE_BEATS of them
GRACE_BEATS = 3
MAX_RETRY = 2  # a trial whose worker dies is re-queued this many times at most
MAX_FAILS_IN_ROW = 3  # a worker stops after this many failed trials in a row (something is broken)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = FINISHED + (TrialState.RUNNING, TrialState.WAITING)
# Keys that change what is validated (or where): trials that differ in them would not be comparable.
NOT_SEARCHABLE = {"data.root": "it is set by --data", "data.folds": "it changes the validation folds",
                  "data.fold": "use --folds", "data.split_seed": "it changes the validation folds",
                  "data.young_below": "it changes the labels", "data.old_from": "it changes the labels",
                  "data.relabel": "it changes the labels"}
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")  # YAML 1.1 reads 1e-4 as a string
MISSING = object()
_EXAMPLE = "e.g. optim.lr: {log: [1e-4, 3e-3]} or augment.preset: {choice: [light, strong]}"


# ------------------------------------------------------------------------------------------- the space
@dataclass
class Dim:
    """One searched key: its Optuna distribution, and for a choice the config values behind the labels
    Optuna stores (lists and mappings are stored as their YAML text, which is also their --set text)."""

    key: str
    kind: str
    distribution: BaseDistribution
    values: list[Any] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return self.decode(trial.suggest_categorical(self.key, d.choices))
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.key, d.low, d.high)
        return trial.suggest_float(self.key, d.low, d.high, log=d.log)

    def decode(self, param: Any) -> Any:
        """The config value of an Optuna parameter value."""
        if self.values is None:
            return param
        return self.values[list(self.distribution.choices).index(param)]

    def label(self, value: Any) -> Any:
        """The Optuna parameter value of a config value, or MISSING when the space does not hold it."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return next((lab for v, lab in zip(self.values or [], d.choices, strict=True) if _same(v, value)), MISSING)
        if not _is_number(value) or not d.low <= value <= d.high:
            return MISSING
        if isinstance(d, IntDistribution):
            return int(value) if float(value).is_integer() else MISSING
        return float(value)

    def ends(self) -> list[Any]:
        """The values to check against the config: every choice, or both ends of the range (ranges in the
        config are intervals, so the ends decide)."""
        d = self.distribution
        return list(self.values or []) if isinstance(d, CategoricalDistribution) else [d.low, d.high]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: 1 and 1.0 are, True and 1 are not."""
    return a == b and (type(a) is type(b) or _is_number(a) and _is_number(b))


def set_text(value: Any) -> str:
    """The text of `value` after `--set key=`, read back by the config as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _number(x: Any, integer: bool) -> float | int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, str) and _NUMBER.match(x):
        x = float(x)
    if integer:
        return x if isinstance(x, int) else None
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _bounds(kind: str, args: Any, integer: bool) -> tuple[Any, Any]:
    what = "two whole numbers" if integer else "two numbers"
    if not isinstance(args, list) or len(args) != 2:
        raise CompError(f"{kind} takes [low, high], {what}; got {args!r}")
    lo, hi = (_number(a, integer) for a in args)
    if lo is None or hi is None:
        raise CompError(f"{kind} takes [low, high], {what}; got {args!r}")
    if lo > hi:
        raise CompError(f"{kind}: low {lo:g} is above high {hi:g}; write [low, high]")
    return lo, hi


DISTRIBUTIONS = Registry("distribution", "a space entry")


@DISTRIBUTIONS.register("log")
def _log(args: Any) -> Dim:
    """A float drawn uniformly on a log scale: lr, weight decay."""
    lo, hi = _bounds("log", args, integer=False)
    if lo <= 0:
        raise CompError(f"log: the low end must be above 0 (a log scale), got {lo:g}; use float for ranges from 0")
    return Dim("", "log", FloatDistribution(lo, hi, log=True))


@DISTRIBUTIONS.register("float")
def _float(args: Any) -> Dim:
    lo, hi = _bounds("float", args, integer=False)
    return Dim("", "float", FloatDistribution(lo, hi))


@DISTRIBUTIONS.register("int")
def _int(args: Any) -> Dim:
    lo, hi = _bounds("int", args, integer=True)
    return Dim("", "int", IntDistribution(lo, hi))


@DISTRIBUTIONS.register("choice")
def _choice(args: Any) -> Dim:
    if not isinstance(args, list) or not args:
        raise CompError(f"choice takes a non-empty list of values, e.g. [light, strong]; got {args!r}")
    labels = [v if v is None or isinstance(v, bool | int | float | str) else set_text(v) for v in args]
    twice = next((lab for i, lab in enumerate(labels) if lab in labels[:i]), None)
    if twice is not None:
        raise CompError(f"choice lists {twice!r} twice")
    return Dim("", "choice", CategoricalDistribution(labels), list(args))


@dataclass
class Space:
    source: str  # the file (or "the study") it came from, for messages
    raw: dict  # the mapping as read, JSON-safe: what the study stores and compares
    dims: dict[str, Dim]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {k: d.suggest(trial) for k, d in self.dims.items()}

    def overrides(self, values: dict[str, Any]) -> list[str]:
        return [f"{k}={set_text(v)}" for k, v in values.items()]

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: self.dims[k].decode(v) if k in self.dims else v for k, v in params.items()}


def _json_safe(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def parse_space(raw: Any, source: str, pipeline: Path | None, sets: list[str]) -> Space:
    """A space mapping checked entry by entry: its form, then every value a trial could draw against the
    config (types, ranges) and the registries. All problems at once, one line each."""
    if raw is None:
        raise CompError(f"{source}: the space is empty; give one line per key, {_EXAMPLE}")
    if not isinstance(raw, dict):
        raise CompError(f"{source}: a space is a mapping of dotted config keys to distributions, not a "
                        f"{type(raw).__name__}; {_EXAMPLE}")
    fixed = {k for k, _ in _parse_sets(sets)}
    problems: list[str] = []
    dims: dict[str, Dim] = {}
    for key, spec in raw.items():
        key = str(key)
        where = f"{source}: {key}"
        if key in NOT_SEARCHABLE:
            problems.append(f"{where}: cannot be searched ({NOT_SEARCHABLE[key]}); remove it from the space")
            continue
        if key in fixed:
            problems.append(f"{where}: is also fixed with --set; search it or fix it, not both")
            continue
        if not isinstance(spec, dict) or len(spec) != 1:
            problems.append(f"{where}: expected one distribution {{{DISTRIBUTIONS.choices.replace(' ', '')}: ...}}, "
                            f"got {spec!r:.60}; write dotted keys, {_EXAMPLE}")
            continue
        ((kind, args),) = spec.items()
        if kind not in DISTRIBUTIONS:
            hint = (f"; write dotted keys, e.g. {key}.{kind}: {{log: [...]}}" if isinstance(args, dict)
                    else f"; choose one of {', '.join(DISTRIBUTIONS)}")
            problems.append(f"{where}: unknown distribution {kind!r}{hint}")
            continue
        try:
            dim = DISTRIBUTIONS[kind](args)
        except CompError as e:
            problems.append(f"{where}: {e.lines[0]}")
            continue
        dim.key = key
        bad = _refused_value(dim, pipeline, sets)
        if bad:
            problems.append(f"{where}: {bad}")
            continue
        dims[key] = dim
    if problems:
        raise CompError(*problems)
    if not dims:
        raise CompError(f"{source}: the space names no key; {_EXAMPLE}")
    return Space(source, _json_safe(raw), dims)


def _refused_value(dim: Dim, pipeline: Path | None, sets: list[str]) -> str | None:
    """Why the config refuses a value this dimension can draw (the first such value), or None."""
    from .train.factory import check_config

    src = f"{pipeline or 'defaults'} + --set"
    for value in dim.ends():
        try:
            check_config(load_config(pipeline, [*sets, f"{dim.key}={set_text(value)}"]))
        except CompError as e:
            why = e.lines[0]
            for prefix in (f"config: {src}: ", f"{src}: ", "config: "):
                why = why.removeprefix(prefix)
            return f"{value!r} is refused by the config: {why}"
    return None


def load_space(path: Path | str, pipeline: Path | None, sets: list[str]) -> Space:
    return parse_space(read_yaml(path), str(path), pipeline, sets)


def _parse_sets(sets: list[str]) -> list[tuple[str, str]]:
    out = []
    for s in sets:
        if "=" not in s:
            raise CompError(f"--set {s!r}: expected key=value, e.g. --set train.epochs=3")
        k, v = s.split("=", 1)
        out.append((k.strip(), v))
    return out


# ---------------------------------------------------------------------------------------- the pruners
PRUNERS = Registry("pruner", "--pruner")


@PRUNERS.register("median")
def _median(startup: int, warmup: int) -> optuna.pruners.BasePruner:
    """Stops a trial whose epoch F1 is below the median of finished trials at that epoch."""
    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


@PRUNERS.register("halving")
def _halving(startup: int, warmup: int) -> optuna.pruners.BasePruner:
    """Successive halving (rungs at epochs warmup, 3·warmup, 9·warmup): keeps the top third at each rung."""
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(warmup, 1), reduction_factor=3)


@PRUNERS.register("none")
def _no_pruner(startup: int, warmup: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------------------- the storage
def default_storage(out: Path) -> str:
    return f"sqlite:///{(out / 'sweep.db').resolve()}"


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: shown as given, it holds no password we could find
        return url


def _sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite URL (None for other databases and in-memory SQLite)."""
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def open_storage(url: str, heartbeat: int | None = None) -> optuna.storages.RDBStorage:
    """The study database. With `heartbeat`, trials beat and stale ones are failed and re-queued (workers);
    without, a plain connection that never touches a running trial (`show`)."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kw: dict[str, Any] = {}
    sqlite = url.startswith("sqlite")
    if sqlite:
        kw["engine_kwargs"] = {"connect_args": {"timeout": 60}}  # seconds to wait for another worker's write
    if heartbeat:
        kw.update(heartbeat_interval=heartbeat, grace_period=GRACE_BEATS * heartbeat,
                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = RDBStorage(url, **kw)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CompError(f"--storage {_redact(url)}: cannot open it ({msg[:200]}); check the URL, its driver "
                        "(psycopg for postgresql:// with SQLAlchemy 2.1+, psycopg2 for postgresql+psycopg2://, pymysql for "
                        "mysql+pymysql://) and that the server is up") from None
    if sqlite:
        _serialize_sqlite(storage)
    return storage


def _serialize_sqlite(storage: optuna.storages.RDBStorage) -> None:
    """Every SQLite transaction takes the write lock at BEGIN. Optuna's "take a waiting trial" and
    "fail a stale trial and re-queue it" read, then write, relying on SELECT ... FOR UPDATE, which SQLite
    ignores: without this two workers can run the same queued trial or queue one retry twice.
    PostgreSQL and MySQL honour FOR UPDATE and are left alone."""
    from sqlalchemy import event

    engine = storage.engine

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # SQLAlchemy, not the driver, opens transactions
        dbapi_conn.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # drop connections opened before the hooks


@contextlib.contextmanager
def _creation_lock(url: str):
    """Serialises creating/joining a study on one SQLite file (two workers started at once would both
    create its tables). Other databases handle concurrent creation themselves."""
    path = _sqlite_path(url)
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _find_study(storage: optuna.storages.RDBStorage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


# ----------------------------------------------------------------------------------------- the sweep
@dataclass
class Settings:
    """What every worker of a study must agree on; stored in the study's user attributes."""

    pipeline: str | None
    space: dict
    sets: list[str]
    folds: str | None  # None (data.fold) | "all" | "0,2"
    pruner: str
    prune_startup: int
    prune_warmup: int
    heartbeat: int
    config: dict  # the resolved pipeline + --set without data.root: catches a pipeline edited on one machine

    def as_attrs(self) -> dict:
        return _json_safe(self.__dict__)

    @classmethod
    def from_attrs(cls, attrs: dict, name: str) -> Settings:
        try:
            return cls(**{k: attrs[k] for k in cls.__dataclass_fields__})
        except KeyError:
            raise CompError(f"study {name!r} was not made by `comp sweep` (no sweep settings in it); "
                            "choose another --study") from None


KNOBS = {"pruner": ("--pruner", "median"), "prune_startup": ("--prune-startup", 5),
         "prune_warmup": ("--prune-warmup", 3), "heartbeat": ("--heartbeat", DEFAULT_HEARTBEAT)}


def parse_folds(spec: str | None, n_folds: int) -> list[int] | None:
    """None (data.fold) | "all" | "0,2" → the folds a trial trains (None: data.fold)."""
    from .runs import parse_folds as parse

    if spec is None:
        return None
    return parse(spec, n_folds, full="a sweep scores each trial on held-out people, and a full-data "
                            "run has none; sweep on a fold, then refit the best with `comp train --folds full`")


def parse_keep(spec: str | None) -> int | None:
    """`best:K` → K (keep the checkpoints of the K best trials)."""
    if spec is None:
        return None
    m = re.fullmatch(r"best:(\d+)", spec.strip())
    if not m or int(m.group(1)) < 1:
        raise CompError(f"--keep {spec!r}: expected best:K with K at least 1, e.g. --keep best:3")
    return int(m.group(1))


def _base_config(pipeline: Path | None, sets: list[str], data: Path | None) -> Config:
    from .train.factory import check_config

    cfg = load_config(pipeline, [*sets, *([f"data.root={data}"] if data else [])])
    check_config(cfg)
    return cfg


def _fingerprint(cfg: Config) -> dict:
    flat = cfg.flat()
    flat.pop("data.root")
    return _json_safe(flat)


def _disagreement(stored: Settings, mine: Settings) -> str | None:
    """How a joining worker's pipeline, space, --set or --folds differ from the study's, or None."""
    # The resolved config, not the pipeline's path or the --set text: `./p.yaml` and `p.yaml` are one recipe.
    for name, what in (("config", "resolved pipeline (+ --set)"), ("space", "space"), ("folds", "--folds")):
        a, b = getattr(stored, name), getattr(mine, name)
        if a == b:
            continue
        if name == "config":
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            return f"its {what} differs in {', '.join(diff[:4])}"
        return f"its {what} is {a!r:.80}, not {b!r:.80}"
    return None


@dataclass
class Sweep:
    """A study opened by a worker: where it lives and what its trials train."""

    name: str
    out: Path
    url: str
    settings: Settings
    space: Space
    pipeline: Path | None


def _trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:04d}"


def prepare(study: str | None = None, pipeline: Path | str | None = None, space: Path | str | None = None,
            data: Path | str | None = None, storage: str | None = None, out: Path | str | None = None,
            folds: str | None = None, sets: list[str] | None = None, n_trials: int = 20,
            **knobs: Any) -> tuple[Sweep, optuna.Study]:
    """Creates the study (the first worker) or joins it (the others) and opens it with heartbeats.
    Everything that can be checked without writing is checked first: the pipeline and --set, every value
    of the space, the folds, the data. `knobs`: pruner, prune_startup, prune_warmup, heartbeat (None: the
    study's, or the defaults for a new one)."""
    from . import runs


    optuna.logging.set_verbosity(optuna.logging.WARNING)  # comp prints its own line per trial
    pipeline = Path(pipeline) if pipeline is not None else None
    sets = list(sets or [])
    if study is None:
        if pipeline is None:
            raise CompError("give -p PIPELINE and --space SPACE.yaml to start a sweep, or --study NAME to join one")
        study = pipeline.stem
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", study):
        raise CompError(f"--study {study!r}: use letters, digits, '.', '_' and '-' (it names a folder)")
    given = {k: v for k, v in knobs.items() if v is not None}
    if set(given) - set(KNOBS):
        raise TypeError(f"unknown sweep settings {sorted(set(given) - set(KNOBS))}")
    if "pruner" in given:
        PRUNERS.check(given["pruner"])
    for name in ("prune_startup", "prune_warmup"):
        if given.get(name, 0) < 0:
            raise CompError(f"{KNOBS[name][0]} {given[name]}: must be 0 or more")
    if given.get("heartbeat", 1) < 1:
        raise CompError(f"--heartbeat {given['heartbeat']}: must be at least 1 second")
    out = Path(out) if out is not None else SWEEPS_DIR / study
    url = storage or default_storage(out)
    mine = None
    if space is not None:  # everything checked here, before the storage is touched
        sp = load_space(space, pipeline, sets)
        cfg = _base_config(pipeline, sets, Path(data) if data else None)
        n_folds = cfg.data.folds
        spec = folds if folds in (None, "all") else ",".join(map(str, parse_folds(folds, n_folds)))
        mine = Settings(str(pipeline) if pipeline else None, sp.raw, sets, spec,
                        **{k: given.get(k, default) for k, (_, default) in KNOBS.items()}, config=_fingerprint(cfg))
        runs.train_frame(cfg)  # reads and checks the data: every trial would fail on bad data
    elif pipeline is not None:
        raise CompError("-p without --space: give --space SPACE.yaml (or neither, with --study, to join a sweep)")
    elif sets or folds:
        raise CompError("--set and --folds belong to the sweep: give them with -p and --space, or join with "
                        "--study (and --storage, --data) alone")
    db = _sqlite_path(url)
    if mine is None and db is not None and not db.is_file():
        raise CompError(f"no sweep {study!r}: {db} does not exist; start it with -p PIPELINE --space SPACE.yaml")
    if mine is not None and db is not None and not db.is_file() and (out / "trials").is_dir():
        raise CompError(f"{out / 'trials'}: trial folders of an earlier sweep are here but its database is gone; "
                        f"delete {out} or choose another --study")
    with _creation_lock(url):
        plain = open_storage(url)
        found = _find_study(plain, study)
        if found is None and mine is None:
            raise CompError(f"no sweep {study!r} in {_redact(url)}; start it with -p PIPELINE --space SPACE.yaml")
        if found is None:
            try:
                _create(plain, study, mine, sp, pipeline, sets)
                settings = mine
            except optuna.exceptions.DuplicatedStudyError:  # another machine created it a moment ago
                found = _await_settings(plain, study)
        if found is not None:
            settings = Settings.from_attrs(found.user_attrs, study)
            why = _disagreement(settings, mine) if mine is not None else None
            if why:
                raise CompError(f"sweep {study!r} in {_redact(url)} was started differently: {why}; join it with "
                                "the same options (or with --study, --storage and --data alone), or choose another --study")
            for name, value in given.items():
                if value != getattr(settings, name):
                    raise CompError(f"sweep {study!r} uses {KNOBS[name][0]} {getattr(settings, name)}, not {value}; "
                                    "leave the option out to join it")
        plain.engine.dispose()
    if mine is None:  # joined with --study alone: the stored settings, checked on this machine
        pipeline = Path(settings.pipeline) if settings.pipeline else None
        sp = parse_space(settings.space, f"the space of sweep {study!r}", pipeline, settings.sets)
        cfg = _base_config(pipeline, settings.sets, Path(data) if data else None)
        diff = sorted(k for k, v in _fingerprint(cfg).items() if settings.config.get(k) != v)
        if diff:
            raise CompError(f"{pipeline}: on this machine it differs from the one sweep {study!r} started with "
                            f"({', '.join(diff[:4])}); use the same pipeline")
        runs.train_frame(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        st = optuna.load_study(
            study_name=study, storage=open_storage(url, heartbeat=settings.heartbeat),
            # no seed: two workers with one seed would draw the same parameters
            sampler=optuna.samplers.TPESampler(n_startup_trials=max(4, min(10, n_trials // 4))),
            pruner=PRUNERS.resolve(settings.pruner)(settings.prune_startup, settings.prune_warmup))
    return Sweep(study, out, url, settings, sp, pipeline), st


def _await_settings(storage: optuna.storages.RDBStorage, name: str, seconds: float = 30.0) -> optuna.Study:
    """The study another worker is creating, once its settings are stored (they are written last)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = _find_study(storage, name)
        if found is not None and all(k in found.user_attrs for k in Settings.__dataclass_fields__):
            return found
        time.sleep(0.5)
    raise CompError(f"study {name!r} appeared in {_redact(storage.url)} but holds no sweep settings after "
                    f"{seconds:.0f} s; was it made by `comp sweep`? Choose another --study")


def _create(storage: optuna.storages.RDBStorage, name: str, s: Settings, space: Space, pipeline: Path | None,
            sets: list[str]) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for k, v in s.as_attrs().items():
        study.set_user_attr(k, v)
    # The pipeline as it is runs first when the space holds its values: every sweep has its baseline.
    base = load_config(pipeline, sets).to_dict()
    params = {}
    for key, dim in space.dims.items():
        node: Any = base
        for part in key.split("."):
            node = node.get(part, MISSING) if isinstance(node, dict) else MISSING
        label = dim.label(node)
        if label is MISSING:
            return study
        params[key] = label
    study.enqueue_trial(params, user_attrs={"baseline": True})
    return study


class _Surplus(Exception):
    """A trial started while another worker started the study's last one: ended at once, not counted."""


def _is_retry(t: FrozenTrial) -> bool:
    return "failed_trial" in t.system_attrs  # set by RetryHeartbeatStaleTrialCallback


def _surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Whether `n_trials` were started before this fresh one. Counting and starting are not one
    transaction, so two workers can both start "the last" trial; the later one gives way. Retries are
    never surplus (each replaces a counted trial) and always count."""
    ahead = sum(1 for t in study.get_trials(deepcopy=False, states=LIVE)
                if t.number != trial.number and (t.number < trial.number or _is_retry(t)))
    return ahead >= n_trials


class _QuietSurplus(logging.Filter):
    """Keeps Optuna from logging as failures (with a traceback) surplus trials and the trial Ctrl-C stopped:
    comp says what happened to both in one line of its own."""

    def __init__(self):
        super().__init__()
        self.numbers: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt) and msg.startswith("Trial "):
            self.numbers.add(int(msg.split()[1]))  # and its second line, "Trial N failed with value None."
        return not any(msg.startswith(f"Trial {n} failed") for n in self.numbers)


def train_command(pipeline: Path | None, data: Path | None, run_dir: Path, folds: str | None,
                  sets: list[str]) -> str:
    """The `comp train` command line that trains what a trial trained."""
    args = ["comp", "train"] + (["-p", str(pipeline)] if pipeline else []) + (["--data", str(data)] if data else [])
    args += ["--out", str(run_dir)] + (["--folds", folds] if folds else [])
    for s in sets:
        args += ["--set", s]
    return shlex.join(args)


@dataclass
class SweepResult:
    name: str
    out: Path
    url: str
    n_trials: int
    ran: list[FrozenTrial] = field(default_factory=list)  # the trials this worker ran (surplus ones left out)
    finished: int = 0  # complete + pruned trials in the study
    stopped: str = "done"  # done | timeout
    best: FrozenTrial | None = None
    thinned: list[Path] = field(default_factory=list)  # run folders whose checkpoints --keep deleted


def run(pipeline: Path | str | None = None, space: Path | str | None = None, data: Path | str | None = None,
        n_trials: int = 20, storage: str | None = None, study: str | None = None, out: Path | str | None = None,
        timeout: float | None = None, folds: str | None = None, sets: list[str] | None = None,
        keep: str | None = None, **knobs: Any) -> SweepResult:
    """One worker: creates or joins the study, then runs trials until the study holds `n_trials` finished
    (complete or pruned) ones, or `timeout` seconds have passed (no trial starts after that; the running
    one finishes). `n_trials=0` only creates the study: the coordinator step before starting workers."""
    if n_trials < 0:
        raise CompError(f"--trials {n_trials}: must be 0 or more")
    if timeout is not None and timeout <= 0:
        raise CompError(f"--timeout {timeout}: must be more than 0 seconds")
    k = parse_keep(keep)
    sw, st = prepare(study, pipeline, space, data, storage, out, folds, sets, n_trials, **knobs)
    result = SweepResult(sw.name, sw.out, sw.url, n_trials)
    have = sum(t.state in FINISHED for t in st.get_trials(deepcopy=False))
    if n_trials:
        ui.console.print(f"sweep {sw.name} ({_redact(sw.url)}): {have} of {n_trials} trials finished; run folders in "
                         f"{sw.out / 'trials'}", highlight=False)
    quiet = _QuietSurplus()
    optuna_logger = logging.getLogger("optuna.study._optimize")  # where Optuna logs failed trials
    optuna_logger.addFilter(quiet)
    objective = _objective(sw, st, Path(data) if data else None, n_trials, quiet)
    t0, fails, told_waiting = time.time(), 0, False
    try:
        while True:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(st)  # a dead worker's trial is re-queued before counting
            states = [t.state for t in st.get_trials(deepcopy=False)]
            finished = sum(s in FINISHED for s in states)
            running, waiting = states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
            if finished >= n_trials:
                break
            if timeout is not None and time.time() - t0 >= timeout:
                result.stopped = "timeout"
                break
            if not waiting and finished + running >= n_trials:  # the rest runs elsewhere; one may yet die
                if not told_waiting:
                    ui.console.print(f"sweep {sw.name}: waiting for {running} trial(s) running in other workers "
                                     "(a dead worker's trial is taken up here)", highlight=False)
                    told_waiting = True
                time.sleep(min(sw.settings.heartbeat, 5))
                continue
            told_waiting = False
            ended: list[FrozenTrial] = []
            try:
                st.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_append_to(ended)])
            except KeyboardInterrupt:
                ui.console.print(f"sweep {sw.name}: interrupted; the running trial is marked failed (not counted, "
                                 "not retried); run the same command to go on", highlight=False)
                raise
            except ValueError as e:  # Optuna could not record the end of a trial another worker had failed
                if not str(e).startswith("Cannot tell a"):
                    raise
                ui.console.print(f"sweep {sw.name}: this worker's trial was silent for over "
                                 f"{GRACE_BEATS * sw.settings.heartbeat} s (a frozen or suspended machine?), so "
                                 "another worker failed and re-queued it; going on with the next", highlight=False)
                continue
            t = ended[0]
            if t.number in quiet.numbers:
                continue
            result.ran.append(t)
            _say_trial(t)
            fails = fails + 1 if t.state == TrialState.FAIL else 0
            if fails >= MAX_FAILS_IN_ROW:
                raise CompError(f"sweep {sw.name}: {fails} trials in a row failed, the last with "
                                f"{t.user_attrs.get('error', 'an error')!s:.300}; fix it and run the same command again")
    finally:
        optuna_logger.removeFilter(quiet)
    trials = st.get_trials(deepcopy=False)
    result.finished = sum(t.state in FINISHED for t in trials)
    result.best = _best(trials)
    if k is not None:
        result.thinned = keep_best(trials, k)
    return result


def _append_to(ended: list[FrozenTrial]) -> Callable[[optuna.Study, FrozenTrial], None]:
    return lambda _study, trial: ended.append(trial)


def _say_trial(t: FrozenTrial) -> None:
    a = t.user_attrs
    minutes = t.duration.total_seconds() / 60 if t.duration else 0.0
    if t.state == TrialState.COMPLETE:
        what = f"complete, F1 {t.value:.4f}"
    elif t.state == TrialState.PRUNED and t.last_step is not None:
        what = f"pruned at epoch {t.last_step} (F1 {t.intermediate_values[t.last_step]:.4f})"
    elif t.state == TrialState.PRUNED:
        what = "pruned"
    else:
        what = f"failed: {a.get('error', 'interrupted')!s:.200}"
    retry = f" (retry of {a['retry_of']})" if "retry_of" in a else ""
    ui.console.print(f"trial {t.number}{retry}: {what} in {minutes:.1f} min → {a.get('run_dir', '')}", highlight=False)


def _best(trials: list[FrozenTrial]) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _report(trial: optuna.Trial, row: dict) -> None:
    """An epoch's validation F1 for the pruner. After a failed resume the run starts over and reports
    epochs the dead worker reported already: Optuna keeps the first value and warns; the warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        trial.report(float(row["f1"]), step=int(row["epoch"]))


def _objective(sw: Sweep, study: optuna.Study, data: Path | None, n_trials: int,
               quiet: _QuietSurplus) -> Callable[[optuna.Trial], float]:
    from . import runs
    from .train.engine import train

    s = sw.settings

    def objective(trial: optuna.Trial) -> float:
        previous = trial.user_attrs  # a re-queued trial carries the attributes of the one whose worker died
        if "run_dir" not in previous and _surplus(study, trial, n_trials):
            quiet.numbers.add(trial.number)
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"the study already holds {n_trials} trials")
        trial_sets = sw.space.overrides(sw.space.suggest(trial))
        run_dir = Path(previous.get("run_dir") or _trial_dir(sw.out, trial.number))
        cfg = load_config(sw.pipeline, [*s.sets, *trial_sets, *([f"data.root={data}"] if data else [])])
        folds = parse_folds(s.folds, cfg.data.folds) or [cfg.data.fold]
        attrs = {"trial": trial.number, "run_dir": str(run_dir), "sets": trial_sets,
                 "worker": f"{socket.gethostname()}:{os.getpid()}",
                 "command": train_command(sw.pipeline, data, run_dir, s.folds, [*s.sets, *trial_sets])}
        if "trial" in previous:
            attrs["retry_of"] = previous["trial"]
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        first, epochs_run = folds[0], []

        def on_epoch(fold: int, row: dict) -> None:
            if fold != first:  # steps are the first fold's epochs: every trial is judged on the same fold
                return
            epochs_run.append(row["epoch"])
            _report(trial, row)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {row['epoch']}: F1 {row['f1']:.4f}")

        resume = (run_dir / "config.yaml").is_file()  # a dead worker's run folder: carry on from its last epoch
        try:
            if resume:
                state = runs.committed_state(runs.fold_dir(run_dir, first))  # what --resume continues from
                rows = runs.read_metrics(state).to_dict("records") if state and (state / "metrics.csv").is_file() else []
                for row in rows:  # the epochs it trained count: the pruner sees the whole curve
                    _report(trial, row)
                trial.set_user_attr("resumed_after_epoch", len(rows))
                if rows and trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {rows[-1]['epoch']}: F1 {rows[-1]['f1']:.4f}")
            try:
                result = train(cfg, run_dir, folds, resume=resume, on_epoch=on_epoch)
            except optuna.TrialPruned:
                raise
            except Exception as e:
                if not resume or epochs_run:
                    raise
                ui.console.print(f"trial {trial.number}: cannot resume {run_dir} ({str(e)[:200]}); starting it over",
                                 highlight=False)
                result = train(cfg, run_dir, folds, force=True, on_epoch=on_epoch)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # taken over meanwhile
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:500])
            raise
        trial.set_user_attr("fold_f1", {str(r.fold): r.best.get("f1") for r in result.folds})
        if result.oof is not None:  # every fold trained: the OOF F1 is the honest score
            trial.set_user_attr("oof_f1", result.oof["f1"])
            return float(result.oof["f1"])
        return float(sum(r.best.get("f1", 0.0) for r in result.folds) / len(result.folds))

    return objective


# ---------------------------------------------------------------------------------------- keep, show
def keep_best(trials: list[FrozenTrial], k: int) -> list[Path]:
    """Deletes the checkpoints (*.safetensors, state folders) of every finished or failed trial outside the `k`
    best, on this machine; their config, metrics and validation probabilities stay. Folders that a running
    or queued trial uses are left alone. Returns the run folders it thinned."""
    from . import runs

    best = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None),
                  key=lambda t: (-t.value, t.number))[:k]
    keep = {t.user_attrs.get("run_dir") for t in best}
    keep |= {t.user_attrs.get("run_dir") for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)}
    thinned = set()
    for t in trials:
        d = t.user_attrs.get("run_dir")
        if not d or d in keep or not Path(d).is_dir():
            continue
        for fold in Path(d).glob("fold*"):
            for p in fold.glob("*.safetensors"):
                p.unlink()
                thinned.add(Path(d))
            for state in [*fold.glob("state-*"), fold / "state"]:  # state/: runs of comp before atomic checkpoints
                if state.is_dir():
                    shutil.rmtree(state)
                    thinned.add(Path(d))
            (fold / runs.CHECKPOINT).unlink(missing_ok=True)
    return sorted(thinned)


@dataclass
class TrialRow:
    number: int
    state: str
    value: float | None
    epochs: int  # epochs the pruner saw (of the first fold)
    params: dict[str, Any]
    run_dir: str
    worker: str
    note: str
    minutes: float


@dataclass
class Shown:
    name: str
    url: str
    out: Path
    settings: Settings
    rows: list[TrialRow]
    best: FrozenTrial | None
    pngs: list[Path]
    skipped: list[str]  # plots that could not be drawn yet, and why
    thinned: list[Path]
    dashboard: str


def _note(t: FrozenTrial, retried_as: dict[int, int]) -> str:
    a = t.user_attrs
    notes = ["baseline"] if a.get("baseline") else []
    if "retry_of" in a:
        notes.append(f"retry of {a['retry_of']}")
    if a.get("resumed_after_epoch"):
        notes.append(f"resumed after epoch {a['resumed_after_epoch']}")
    if a.get("surplus"):
        notes.append("surplus: the study was full, not run")
    elif "error" in a:
        notes.append(str(a["error"])[:80])
    elif t.state == TrialState.FAIL:
        notes.append(f"worker died; retried as {retried_as[t.number]}" if t.number in retried_as else "interrupted")
    return "; ".join(notes)


def show(study: str, storage: str | None = None, out: Path | str | None = None, keep: str | None = None,
         plots: bool = True) -> Shown:
    """The study as it stands, read without the heartbeat machinery (so it never fails a live trial): the
    best trial and its `comp train` command, every trial, and three PNGs in the sweep folder."""
    k = parse_keep(keep)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(out) if out is not None else SWEEPS_DIR / study
    url = storage or default_storage(out)
    db = _sqlite_path(url)
    if db is not None and not db.is_file():
        raise CompError(f"no sweep {study!r}: {db} does not exist; pass the sweep's --storage URL (or its --out)")
    plain = open_storage(url)
    st = _find_study(plain, study)
    if st is None:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(plain)) or "none"
        raise CompError(f"no sweep {study!r} in {_redact(url)} (studies there: {names})")
    settings = Settings.from_attrs(st.user_attrs, study)
    trials = st.get_trials(deepcopy=False)
    retried_as = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    rows = [TrialRow(t.number, t.state.name.lower(), t.value, len(t.intermediate_values), dict(t.params),
                     t.user_attrs.get("run_dir", ""), t.user_attrs.get("worker", ""), _note(t, retried_as),
                     t.duration.total_seconds() / 60 if t.duration else 0.0)
            for t in trials]
    pngs, skipped = _plots(st, out) if plots else ([], [])
    thinned = keep_best(trials, k) if k is not None else []
    return Shown(study, _redact(url), out, settings, rows, _best(trials), pngs, skipped, thinned,
                 f"pip install optuna-dashboard && optuna-dashboard {_redact(url)}")


PLOTS = {"history": ("optimisation history", "plot_optimization_history"),
         "importances": ("parameter importances", "plot_param_importances"),
         "parallel": ("parallel coordinates", "plot_parallel_coordinate")}


def _plots(study: optuna.Study, out: Path) -> tuple[list[Path], list[str]]:
    """history.png, importances.png, parallel.png (Optuna's matplotlib backend), each written whole."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ovm

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return [], ["plots: no complete trial yet"]
    varied = len(done) >= 2 and any(len({repr(t.params.get(p)) for t in done}) > 1 for p in done[0].params)
    pngs, skipped = [], []
    for name, (what, fn) in PLOTS.items():
        if name == "importances" and not varied:
            skipped.append(f"{what}: needs 2 complete trials with different parameters")
            continue
        # Optuna's plots set the ggplot style globally and warn that they are experimental.
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore")
            try:
                ax = getattr(ovm, fn)(study)
            except Exception as e:  # a plot Optuna cannot draw from these trials yet
                skipped.append(f"{what}: {str(e)[:120]}")
                continue
            fig = ax.figure
            path = out / f"{name}.png"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            pngs.append(path)
    return pngs, skipped
