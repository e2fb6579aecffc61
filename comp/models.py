"""Models: any timm architecture, its weights (none / hub / a local file / package:NAME), its input
normalisation, and the two heads. Reading, fitting and converting weights files is in `comp.weights`.

A head decides how many logits the network emits and how they become the 18 class probabilities, so
everything after the model (metrics, OOF files, predict, ensemble) is head-agnostic:
- multiclass: 18 logits → softmax.
- multitask: mask 3 + gender 2 + age 3 logits → the product of the three softmaxes, placed by the class
  formula (labels.probs_from_heads); each head has its own loss and weight.
"""
from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from . import ui
from . import weights as W
from .config import Config, ModelConfig
from .data import labels as L
from .data.loader import Normalizer
from .errors import CompError
from .registry import Registry

_HEAD_SLICES = {"mask": slice(0, 3), "gender": slice(3, 5), "age": slice(5, 8)}
HEADS = Registry("head", "model.head")  # kind → number of logits
HEADS.register("multiclass", L.N_CLASSES)
HEADS.register("multitask", sum(L.HEAD_SIZES.values()))


class Head:
    def __init__(self, kind: str, weights: dict[str, float] | None = None):
        self.n_outputs = HEADS.resolve(kind)
        self.kind = kind
        self.weights = {h: float((weights or {}).get(h, 1.0)) for h in L.HEADS}

    def split(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Multitask logits → {'mask': (N,3), 'gender': (N,2), 'age': (N,3)}."""
        return {h: logits[:, s] for h, s in _HEAD_SLICES.items()}

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, 18) class probabilities, float32."""
        logits = logits.float()
        if self.kind == "multiclass":
            return F.softmax(logits, dim=1)
        p = {h: F.softmax(v, dim=1) for h, v in self.split(logits).items()}
        return L.probs_from_heads(p["mask"], p["gender"], p["age"])


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline():
    """Makes huggingface_hub use its local cache only, so an unreachable hub fails at once, not after
    ~46 s of retries."""
    import huggingface_hub.constants as hf

    old = hf.HF_HUB_OFFLINE
    hf.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf.HF_HUB_OFFLINE = old


def _hub_model(name: str, **kwargs) -> torch.nn.Module:
    import huggingface_hub.constants as hf

    offline = hf.HF_HUB_OFFLINE or not _hub_reachable()
    try:
        with _hub_offline() if offline else contextlib.nullcontext():
            return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as e:
        why = "the hub is offline and they are not in the local cache" if offline else f"download failed ({e})"
        raise CompError(f"model.weights=hub: cannot load {name}'s pretrained weights: {why}; download the file on "
                        "a connected machine and set model.weights=/path/to/weights.safetensors (or .pth), "
                        "package:NAME, or model.weights=none to train from scratch") from None


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch file (plain, or nested under 'state_dict' / 'model')."""
    return W.read_checkpoint(path)[0]


def load_weights_file(model: torch.nn.Module, path: Path | str) -> tuple[int, list[str]]:
    """Loads every tensor of the model from the file (by name, else by order and shape); only a classifier of
    another class count is left freshly initialised. Returns (loaded count, classifier names left fresh);
    refuses, loading nothing, when anything else does not fit."""
    f = W.load_weights(model, path)
    return len(f.tensors), f.fresh


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise CompError(f"model.name={name!r} is not a timm model; e.g. {', '.join(close) or 'resnet18'}")


def create_model(cfg: ModelConfig, head: Head | None = None) -> torch.nn.Module:
    head = head or Head(cfg.head, cfg.head_weights)
    kwargs = dict(num_classes=head.n_outputs, drop_rate=cfg.drop_rate, **cfg.kwargs)
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    check_model_name(cfg.name)
    if cfg.weights == "hub":
        model = _hub_model(cfg.name, **kwargs)
        W.set_norm(model, W.model_norm(model))  # timm's pretrained_cfg of the tag it loaded
        return model
    model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    if cfg.weights in ("none", ""):  # no pretrained weights: ImageNet's, as comp always fed them
        W.set_norm(model, W.Norm(W.IMAGENET_MEAN, W.IMAGENET_STD, "ImageNet (model.weights=none)"))
        return model
    path = cfg.weights
    if cfg.weights.startswith(W.PACKAGE_PREFIX):
        path, made = W.package_file(cfg.weights[len(W.PACKAGE_PREFIX):])
        if made is not None:
            ui.console.print(f"model.weights={cfg.weights}: converted once into {path} ({made.fit.describe()})",
                             highlight=False)
    # a file that records no normalisation: timm's pretrained_cfg of the architecture it is loaded as
    W.set_norm(model, W.model_norm(model))
    f = W.load_weights(model, path)
    if f.mapping is not None:
        ui.console.print(f"model.weights={cfg.weights}: its names differ from {cfg.name}'s; {f.describe()}; "
                         "`comp weights import` saves the converted file", highlight=False)
    if f.made_for:  # e.g. TF-ported weights (TF "same" padding, BN eps 1e-3) in the PyTorch-padded variant
        ui.console.print(f"[yellow]model.weights={cfg.weights} was made for {f.made_for}, loaded into {cfg.name}: "
                         f"the tensors fit, but padding or normalisation layers may differ; set "
                         f"model.name={f.made_for} to run the network the weights were trained in[/]", highlight=False)
    return model


def resolve_norm(cfg: Config, weights_norm: W.Norm) -> W.Norm:
    """The rule for a run's input normalisation: augment.mean/std when the pipeline sets them, else what the
    weights expect."""
    a = cfg.augment
    if a.mean is not None and a.std is not None:
        return W.Norm(tuple(a.mean), tuple(a.std), "augment.mean/std")
    return weights_norm


def input_norm(cfg: Config, model: torch.nn.Module) -> W.Norm:
    """A run's input normalisation for `model`: resolve_norm with what the model's weights expect, as
    create_model / load_weights_file recorded it on the model (a file's metadata, timm's pretrained_cfg,
    ImageNet for weights=none). Recorded back on the model, so its checkpoints carry it (runs.save_weights)
    and a model loaded from one is fed what training fed it."""
    norm = resolve_norm(cfg, W.model_norm(model))
    W.set_norm(model, norm)
    return norm


def normalizer(cfg: Config, model: torch.nn.Module, channels_last: bool = False) -> Normalizer:
    """The Normalizer of `model` in a run with config `cfg` (train, validation, predict, soup, explain)."""
    norm = input_norm(cfg, model)
    return Normalizer(norm.mean, norm.std, channels_last)


def layer_groups(model: torch.nn.Module) -> dict[int, list[str]]:
    """timm's coarse layer groups of the model, in depth order: group 0 is the stem, then its stages (or blocks),
    the classifier last: the same groups timm's layer-wise lr decay uses."""
    from timm.models import group_modules

    return group_modules(model, model.group_matcher(coarse=True))


def check_freeze(cfg: ModelConfig) -> None:
    """model.freeze must leave at least the classifier's group trainable (checked on a weightless meta model)."""
    if cfg.freeze <= 0:
        return
    with torch.device("meta"):
        groups = layer_groups(timm.create_model(cfg.name, pretrained=False, num_classes=HEADS.resolve(cfg.head)))
    if cfg.freeze >= len(groups):
        raise CompError(f"model.freeze={cfg.freeze}: {cfg.name} has {len(groups)} layer groups (stem, stages, "
                        f"classifier); freeze at most {len(groups) - 1} so something trains")


def freeze(model: torch.nn.Module, n: int) -> list[torch.nn.Module]:
    """Stops training the first n layer groups: no gradients (so no backward pass through them) and, since
    the caller keeps the returned modules in eval mode, their batch-norm statistics stay the loaded ones."""
    if n <= 0:
        return []
    names = [name for g, members in sorted(layer_groups(model).items()) if g < n for name in members]
    modules = [model.get_submodule(name) for name in names]
    for m in modules:
        m.requires_grad_(False)
    return modules
