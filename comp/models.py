"""Models: any timm architecture, its weights (none / hub / a local file), and the two heads.

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

from .config import ModelConfig
from .data import labels as L
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
                        "or model.weights=none to train from scratch") from None


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (plain, or nested under 'state_dict' / 'model')."""
    p = Path(path)
    if not p.is_file():
        raise CompError(f"model.weights={path}: file not found; give a .safetensors/.pth file, 'hub' or 'none'")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files raise many types
        raise CompError(f"{p}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def load_weights_file(model: torch.nn.Module, path: Path | str) -> tuple[int, list[str]]:
    """Loads every tensor whose name and shape match (a classifier of another size is skipped and stays
    freshly initialised). Returns (loaded count, skipped names); refuses a file that matches too little."""
    sd = read_state_dict(path)
    own = model.state_dict()
    ok = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(sd) - set(ok))
    if len(ok) < 0.5 * len(own):
        raise CompError(f"{path}: only {len(ok)} of the model's {len(own)} tensors match; are these weights for "
                        f"this architecture (model.name)?")
    model.load_state_dict(ok, strict=False)
    return len(ok), skipped


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
        return _hub_model(cfg.name, **kwargs)
    model = timm.create_model(cfg.name, pretrained=False, **kwargs)
    if cfg.weights not in ("none", ""):
        load_weights_file(model, cfg.weights)
    return model
