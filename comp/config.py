"""The typed config tree of a pipeline: YAML file + dotted `--set a.b=value` overrides.

Every key is declared here with its default and a one-line comment, so a pipeline YAML only says what
differs. Types and ranges are checked here (unknown keys, wrong types, NaN, a negative lr: one clear line
naming the file and key); names that pick an implementation (loss terms, augmentation preset, schedule,
TTA views, detector, model) are checked against their registries by `comp.train.factory.check_config`
before a run writes anything. The resolved tree is saved in each run folder (`config.yaml`) so predict,
ensemble and report rebuild the run with no flags.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import CompError


def _in(default: Any, lo: float | None = None, hi: float | None = None, *, above: bool = False,
        below: bool = False) -> Any:
    """A field whose value must lie in [lo, hi] (`above`: strictly more than lo; `below`: less than hi)."""
    return field(default=default, metadata={"range": (lo, hi, above, below)})


@dataclass
class DataConfig:
    root: str = "data/synth"  # dataset root holding train/ and eval/ (`--data` sets it)
    size: list[int] = field(default_factory=lambda: [96, 128])  # width, height the model sees ("96x128" in YAML)
    folds: int = _in(5, 2)  # person-level folds (StratifiedGroupKFold on gender x age group)
    fold: int = _in(0, 0)  # the validation fold when one fold is trained (`--fold` / `--folds` override)
    split_seed: int = 0  # seed of the fold assignment: runs to be blended or compared must share it
    young_below: int = _in(30, 1)  # ages below this are age group 0
    old_from: int = _in(60, 2)  # ages from this on are age group 2 (teams tried 58)
    relabel: str | None = None  # CSV of label fixes (see `comp data check --help`)
    crop: str | None = None  # face crop before resizing: a detector (mtcnn | haar | yolo:PATH); None: whole photo
    crop_margin: float = _in(0.3, 0)  # crop box grown by this share of the face's size on each side
    cache: str = "disk"  # decoded images: disk (memmap, shared by runs) | memory (one process) | none (every epoch)
    cache_dir: str | None = None  # where the disk cache and crops live; None: $COMP_CACHE_DIR or ~/.cache/comp
    workers: int = _in(2, 0)  # DataLoader worker processes (0: load in the training process)
    sampler: str = "uniform"  # uniform | weighted (rare classes drawn more often, with replacement)


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any timm architecture (timm.list_models()), optionally with a pretrained tag
    weights: str = "none"  # none (random init) | hub (timm's; needs network) | .safetensors/.pth file | package:NAME
    head: str = "multiclass"  # multiclass (18 logits, one softmax) | multitask (mask 3 + gender 2 + age 3 logits)
    head_weights: dict[str, float] = field(  # multitask only: each head's share of the loss
        default_factory=lambda: {"mask": 1.0, "gender": 1.0, "age": 1.0})
    drop_rate: float = _in(0.0, 0, 1, below=True)  # dropout before the classifier
    drop_path_rate: float = _in(0.0, 0, 1, below=True)  # stochastic depth (architectures that have it)
    channels_last: bool = True  # NHWC memory layout: faster convolutions on CPU and on tensor cores
    freeze: int = _in(0, 0)  # the first N of timm's coarse layer groups (0 = stem, then stages/blocks) keep their
    # loaded weights and batch-norm statistics: no backward through them (faster on a CPU), less forgetting
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments


@dataclass
class AugmentConfig:
    preset: str = "light"  # a name in comp.data.augment.PRESETS: none | light | strong
    ops: list[Any] | None = None  # albumentations list, e.g. [{HorizontalFlip: {p: 0.5}}]; replaces the preset
    # input normalisation, RGB, 0-1 scale; null: the weights' own (their metadata or timm's pretrained_cfg;
    # ImageNet's with model.weights=none), recorded in each checkpoint so predict feeds what training fed
    mean: list[float] | None = None  # e.g. [0.485, 0.456, 0.406] (ImageNet); set together with std
    std: list[float] | None = None  # e.g. [0.229, 0.224, 0.225] (ImageNet); set together with mean


@dataclass
class MixupConfig:
    mixup_alpha: float = _in(0.0, 0)  # Beta(α, α) of Mixup; 0 disables Mixup
    cutmix_alpha: float = _in(0.0, 0)  # Beta(α, α) of CutMix; 0 disables CutMix
    prob: float = _in(1.0, 0, 1)  # chance that a batch is mixed at all
    switch_prob: float = _in(0.5, 0, 1)  # chance of CutMix instead of Mixup when both are on
    off_epoch: int = _in(0, 0)  # stop mixing from this epoch on, to finish on clean images (0: never)


@dataclass
class LossConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"ce": 1.0})  # weighted sum of losses (ce | focal | soft_f1)
    label_smoothing: float = _in(0.0, 0, 1, below=True)  # also applied to Mixup/CutMix targets
    focal_gamma: float = _in(2.0, 0)  # focusing power of the focal term
    class_weights: str = "none"  # none | inverse | sqrt of the train class counts (per head with multitask)
    age_sigma: float = _in(0.0, 0)  # years: train on age groups softened by this error on the recorded age (0: off)


@dataclass
class OptimConfig:
    name: str = "adamw"  # any timm optimizer name (timm.optim.list_optimizers()): adamw, sgd, lamb, ...
    lr: float = _in(1e-3, 0, above=True)  # peak learning rate, for batch_size x processes x grad_accum images
    weight_decay: float = _in(0.05, 0)  # decoupled for adamw; not applied to biases and norms
    momentum: float = _in(0.9, 0, 1, below=True)  # sgd and other momentum optimizers only
    layer_decay: float = _in(1.0, 0, 1, above=True)  # timm's layer-wise lr decay: each layer (block) below the head
    # trains at this × the lr of the one above (0.7-0.9 for pretrained trunks); 1 = one lr for all


@dataclass
class SchedConfig:
    name: str = "cosine"  # a name in comp.train.factory.SCHEDULES: cosine | step | constant (stepped per update)
    warmup_epochs: float = _in(1.0, 0)  # linear warm-up from warmup_lr to optim.lr, before every schedule
    warmup_lr: float = _in(1e-5, 0)  # learning rate at the first update
    min_lr: float = _in(1e-6, 0)  # cosine only: the learning rate reached at the last update
    decay_epochs: float = _in(4.0, 0, above=True)  # step only: multiply the lr by decay_rate every this many epochs
    decay_rate: float = _in(0.3, 0, 1, above=True)  # step only


@dataclass
class TrainConfig:
    epochs: int = _in(10, 1)  # passes over the fold's train images
    batch_size: int = _in(64, 1)  # images per step per process (several GPUs: each takes this many)
    grad_accum: int = _in(1, 1)  # micro-batches per optimizer update (an update sees batch_size x grad_accum)
    mixed_precision: str = "auto"  # auto (bf16 where native: recent GPUs, AMX/AVX512-BF16 CPUs; else fp32) | no | fp16 | bf16
    compile: bool = False  # torch.compile the model (pays off on long GPU runs; measured no gain on a 2-core CPU)
    seed: int = 0  # fold k trains with seed + k (weights init, sampler order, augmentation)
    ema: bool = False  # validate and save an exponential moving average of the weights
    ema_decay: float = _in(0.998, 0, 1, above=True, below=True)  # EMA decay per update (warmed up from 0)
    early_stopping: int = _in(0, 0)  # stop after this many epochs without a better validation macro F1 (0: off)
    grad_clip: float = _in(0.0, 0)  # max global gradient norm (0: off)
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])  # Accelerate trackers; tensorboard if installed


@dataclass
class PredictConfig:
    tta: str = "flip"  # a name in comp.data.tta.TTA_VIEWS: none | flip | flip+scale
    batch_size: int = _in(128, 1)  # images per forward pass in predict and in each epoch's validation


@dataclass
class Config:
    name: str = "run"  # run name: the default run folder is runs/<name>
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

    def flat(self) -> dict[str, Any]:
        """{'data.size': [96, 128], 'optim.lr': 0.001, ...}: one entry per leaf key."""
        return _flatten(self.to_dict())


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix + k not in _DICT_LEAVES:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


_DICT_LEAVES = {"model.head_weights", "model.kwargs", "loss.terms"}  # dict-valued keys, kept whole
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def _check_type(value: Any, tp: Any, key: str, source: str) -> Any:
    """Checks (and mildly coerces: int → float, "96x128" → [96, 128]) a YAML value against a field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _check_type(value, next(a for a in args if a is not type(None)), key, source)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is str and isinstance(value, bool):  # YAML 1.1 reads no/off/false as False: `mixed_precision: no`
        value = "yes" if value else "no"
    if tp is float and isinstance(value, str) and _NUMBER.match(value):  # YAML 1.1 reads 1e-3 as a string
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise CompError(f"{source}: {key}={value!r} must be a finite number")
    if origin is list:
        if key == "data.size" and isinstance(value, str):  # "96x128" reads well in YAML
            m = _SIZE.match(value)
            if not m:
                raise CompError(f"{source}: data.size={value!r}: expected WIDTHxHEIGHT like 96x128 or a list [96, 128]")
            value = [int(m.group(1)), int(m.group(2))]
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


def _check_range(value: Any, bounds: tuple, key: str, source: str) -> None:
    lo, hi, above, below = bounds
    if lo is not None and (value < lo or (above and value == lo)):
        raise CompError(f"{source}: {key}={value!r} must be {'more than' if above else 'at least'} {lo:g}")
    if hi is not None and (value > hi or (below and value == hi)):
        raise CompError(f"{source}: {key}={value!r} must be {'less than' if below else 'at most'} {hi:g}")


def _build(cls, values: Any, prefix: str, source: str):
    if not isinstance(values, dict):
        raise CompError(f"{source}: {prefix or 'the pipeline'} must be a mapping of keys, got {type(values).__name__} "
                        f"{values!r:.60}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in set(values) - set(fields))
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
        if "range" in fields[name].metadata:
            _check_range(value, fields[name].metadata["range"], key, source)
        kwargs[name] = value
    return cls(**kwargs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_error(path: Path, e: yaml.YAMLError) -> CompError:
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return CompError(f"{where}: not valid YAML ({problem}); fix the file")


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise CompError(f"--set {key}=...: empty part in the key; e.g. --set train.epochs=3")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise CompError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """`key=value` strings → (key, value), the value read as YAML ("96x128" stays a size, not hex)."""
    out = []
    for item in overrides or []:
        if "=" not in item:
            raise CompError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        if _SIZE.match(raw):
            value: Any = raw.strip()
        else:
            try:
                value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else None
            except yaml.YAMLError as e:
                raise CompError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', None) or e})") from None
        out.append((key.strip(), value))
    return out


def read_yaml(path: Path | str) -> Any:
    """A YAML file's content, with one clear line for a missing, binary or malformed file."""
    p = Path(path)
    if not p.is_file():
        raise CompError(f"{p}: file not found")
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise CompError(f"{p}: not a text file; a pipeline is YAML text") from None
    except yaml.YAMLError as e:
        raise _yaml_error(p, e) from None


def load_config(path: Path | str | None = None, overrides: list[str] | None = None) -> Config:
    """Config from a pipeline YAML (or the defaults), then `key=value` overrides, validated."""
    tree: Any = {}
    source = str(path) if path else "defaults"
    if path is not None:
        if not Path(path).is_file():
            raise CompError(f"{path}: pipeline not found; the shipped ones are in pipelines/")
        tree = read_yaml(path)
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise CompError(f"{path}: a pipeline is a mapping of sections (data:, model:, ...), not a "
                            f"{type(tree).__name__}")
    for key, value in parse_overrides(overrides):
        _set_dotted(tree, key, value)
    return config_from_dict(tree, source + (" + --set" if overrides else ""))


def _validate(cfg: Config, source: str) -> None:
    """Checks that span several keys (single-key ranges are declared on the fields)."""
    d = cfg.data
    if len(d.size) != 2 or min(d.size) < 8:
        raise CompError(f"{source}: data.size must be width and height of at least 8 px each, got {d.size}")
    if d.fold >= d.folds:
        raise CompError(f"{source}: data.fold={d.fold} must lie in 0..{d.folds - 1} (data.folds={d.folds})")
    if not d.young_below < d.old_from:
        raise CompError(f"{source}: data.young_below={d.young_below} must be below data.old_from={d.old_from}")
    terms = cfg.loss.terms
    if not terms or any(not math.isfinite(w) or w < 0 for w in terms.values()) or sum(terms.values()) <= 0:
        raise CompError(f"{source}: loss.terms={terms} needs non-negative finite weights, not all 0; e.g. {{ce: 1.0}}")
    hw = cfg.model.head_weights
    if set(hw) - {"mask", "gender", "age"}:
        raise CompError(f"{source}: model.head_weights takes mask, gender and age, got {', '.join(hw)}")
    if any(not math.isfinite(w) or w < 0 for w in hw.values()) or sum(hw.values()) <= 0:
        raise CompError(f"{source}: model.head_weights={hw} needs non-negative finite weights, not all 0")
    a = cfg.augment
    if (a.mean is None) != (a.std is None):
        raise CompError(f"{source}: augment.mean and augment.std go together: set both, or neither (null: the "
                        "normalisation the weights expect)")
    if a.mean is not None and (len(a.mean) != 3 or len(a.std) != 3 or min(a.std) <= 0):
        raise CompError(f"{source}: augment.mean and augment.std need 3 values (RGB), std above 0")


def config_from_dict(tree: Any, source: str = "config") -> Config:
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
    return config_from_dict(read_yaml(p) or {}, str(p))
