"""The typed config tree of a pipeline: YAML file + dotted `--set a.b=value` overrides.

Every key is declared here with its default, so a pipeline YAML only says what differs. Unknown keys and
wrongly typed values are refused with the list of valid keys. The resolved tree is saved in each run
folder (`config.yaml`) so predict, ensemble and report can rebuild the run with no flags.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CompError


@dataclass
class DataConfig:
    root: str = "data/synth"  # dataset root (train/, eval/)
    size: list[int] = field(default_factory=lambda: [96, 128])  # width, height the model sees
    folds: int = 5  # person-level folds
    fold: int = 0  # validation fold when training one fold
    split_seed: int = 0
    young_below: int = 30
    old_from: int = 60  # teams tried 58
    relabel: str | None = None  # CSV of label fixes (see `comp data check --help`)
    crop: str | None = None  # face/person crop before resizing: a detector name (mtcnn | haar | yolo)
    crop_margin: float = 0.3  # box enlarged by this share of its size on each side
    cache: str = "disk"  # disk (memmap, reused across runs) | memory | none (decode every epoch)
    cache_dir: str | None = None  # default $COMP_CACHE_DIR or ~/.cache/comp
    workers: int = 2  # DataLoader worker processes
    sampler: str = "uniform"  # uniform | weighted (rare classes drawn more often)


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any timm.create_model name
    weights: str = "none"  # none | hub (timm's pretrained) | path to .safetensors / .pth
    head: str = "multiclass"  # multiclass (18 logits) | multitask (mask 3 + gender 2 + age 3)
    head_weights: dict[str, float] = field(default_factory=lambda: {"mask": 1.0, "gender": 1.0, "age": 1.0})
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    channels_last: bool = True
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments


@dataclass
class AugmentConfig:
    preset: str = "light"  # none | light | strong
    ops: list[Any] | None = None  # albumentations list, e.g. [{HorizontalFlip: {p: 0.5}}]; replaces the preset
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class MixupConfig:
    mixup_alpha: float = 0.0  # 0 disables Mixup
    cutmix_alpha: float = 0.0  # 0 disables CutMix
    prob: float = 1.0  # chance a batch is mixed
    switch_prob: float = 0.5  # chance of CutMix instead of Mixup when both are on
    off_epoch: int = 0  # stop mixing from this epoch on (0: never)


@dataclass
class LossConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})  # ce | focal | soft_f1, weighted sum
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: str = "none"  # none | inverse | sqrt (from train counts)


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | constant
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-5
    min_lr: float = 1e-6


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    seed: int = 0
    ema: bool = False
    ema_decay: float = 0.998
    early_stopping: int = 0  # epochs without a better validation macro F1 before stopping (0: off)
    grad_clip: float = 0.0  # max gradient norm (0: off)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard | wandb | mlflow | ...


@dataclass
class PredictConfig:
    tta: str = "flip"  # none | flip | flip+scale
    batch_size: int = 128


@dataclass
class Config:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.cache": ("disk", "memory", "none"),
    "data.sampler": ("uniform", "weighted"),
    "model.head": ("multiclass", "multitask"),
    "loss.class_weights": ("none", "inverse", "sqrt"),
    "optim.name": ("adamw", "sgd"),
    "sched.name": ("cosine", "constant"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "predict.tta": ("none", "flip", "flip+scale"),
    "augment.preset": ("none", "light", "strong"),
}


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Checks (and mildly coerces: int → float, str → list size) a YAML value against a field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _check_type(value, next(a for a in args if a is not type(None)), key, source)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is list:
        if key == "data.size" and isinstance(value, str) and "x" in value:  # "96x128" reads well in YAML
            value = [int(v) for v in value.lower().split("x")]
        if not isinstance(value, list):
            raise CompError(f"{source}: {key} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, key, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise CompError(f"{source}: {key} must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _check_type(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise CompError(f"{source}: {key} must be {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str, source: str):
    if not isinstance(values, dict):
        raise CompError(f"{source}: {prefix or 'the file'} must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise CompError(f"{source}: unknown key {where}{unknown[0]}; valid keys{' of ' + prefix if prefix else ''}: "
                        f"{', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key, source)
            continue
        value = _check_type(value, tp, key, source)
        if key in CHOICES and value not in CHOICES[key]:
            raise CompError(f"{source}: {key}={value!r}; choose one of {', '.join(CHOICES[key])}")
        kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise CompError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise CompError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Config from a pipeline YAML (or the defaults), then `key=value` overrides, validated."""
    tree: dict = {}
    source = str(path) if path else "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise CompError(f"{p}: pipeline not found; the shipped ones are in pipelines/")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise CompError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree, "", source + (" + --set" if overrides else ""))
    _validate(cfg, source)
    return cfg


def _validate(cfg: Config, source: str) -> None:
    d, t = cfg.data, cfg.train
    if len(d.size) != 2 or min(d.size) < 8:
        raise CompError(f"{source}: data.size must be [width, height] of at least 8 px, got {d.size}")
    if not 0 <= d.fold < d.folds:
        raise CompError(f"{source}: data.fold={d.fold} must lie in 0..{d.folds - 1} (data.folds={d.folds})")
    if t.epochs < 1 or t.batch_size < 1 or t.grad_accum < 1:
        raise CompError(f"{source}: train.epochs, train.batch_size and train.grad_accum must be >= 1")
    if not cfg.loss.terms:
        raise CompError(f"{source}: loss.terms is empty; e.g. {{ce: 1.0}}")
    if set(cfg.model.head_weights) - {"mask", "gender", "age"}:
        raise CompError(f"{source}: model.head_weights takes mask, gender and age")


def config_from_dict(tree: dict, source: str = "config") -> Config:
    cfg = _build(Config, tree, "", source)
    _validate(cfg, source)
    return cfg


def save_config(cfg: Config, path: Path | str) -> None:
    from .fileio import atomic_write

    with atomic_write(path) as fh:
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)


def read_run_config(run_dir: Path | str) -> Config:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise CompError(f"{run_dir}: not a run folder (no config.yaml); pass a folder written by `comp train`")
    return config_from_dict(yaml.safe_load(p.read_text()) or {}, str(p))
