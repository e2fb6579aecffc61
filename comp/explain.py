"""`comp explain`: Grad-CAM overlays of where a run's model looks when it decides.

The decision explained is the 18-class one, or one head's (mask / gender / age). Grad-CAM weighs a
layer's activations by the gradient of a scalar per image: the log-probability of the value the model
chose — of the class, or of the head's marginal (multiclass: the summed probability of the classes with
that head value; multitask: the head's own softmax). So `--head age` answers "what made it say 30-59",
whatever the model thought of mask and gender.

The layer is found for common timm families (see `auto_layer_name`) or named with `--layer`. Maps are
computed at the run's image size and lie in [0, 1]; the PNG grids show them enlarged.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from . import runs
from .config import Config, read_run_config
from .data import labels as L
from .data.cache import load_resized
from .data.reader import parse_folder_name
from .errors import CompError
from .fileio import atomic_dir
from .models import Head, normalizer

TILE_HEIGHT = 160  # display height of a tile, in pixels: training images are often only 64-128 tall
TILES_PER_PAGE = 24
STATUS_COLORS = {"right": "#1a7f37", "wrong": "#cf222e", "unknown": "#57606a"}


# ------------------------------------------------------------------------------------------ target layer
def auto_layer_name(model: torch.nn.Module) -> str | None:
    """The layer Grad-CAM reads for common timm families: the last one that still holds a spatial map."""
    children = dict(model.named_children())
    if "patch_embed" in children and "blocks" in children and hasattr(model.blocks[-1], "norm1"):
        return f"blocks.{len(model.blocks) - 1}.norm1"  # ViT family: tokens, reshaped by _tokens_to_map
    if "layer4" in children:  # ResNet family
        return f"layer4.{len(model.layer4) - 1}"
    if "stages" in children:  # ConvNeXt and other staged nets
        return f"stages.{len(model.stages) - 1}"
    if "conv_head" in children and "bn2" in children:  # EfficientNet / MobileNetV2: conv_head precedes pooling
        return "conv_head"
    if "blocks" in children:  # MobileNetV3: its conv_head runs after pooling, so the last block
        return f"blocks.{len(model.blocks) - 1}"
    return None


def _candidates(model: torch.nn.Module, n: int = 12) -> str:
    names = [name for name, _ in model.named_modules() if name and name.count(".") <= 1]
    return ", ".join(names[-n:])


def resolve_layer(model: torch.nn.Module, name: str | None = None) -> tuple[str, torch.nn.Module]:
    """(dotted name, module) of the target layer: `name`, or the automatic choice."""
    chosen = name or auto_layer_name(model)
    if chosen is None:
        raise CompError(f"{type(model).__name__}: no known Grad-CAM layer for this architecture; name one with "
                        f"--layer, e.g. one of {_candidates(model)}")
    try:
        return chosen, model.get_submodule(chosen)
    except AttributeError:
        raise CompError(f"--layer {chosen}: {type(model).__name__} has no such module; candidates: "
                        f"{_candidates(model)}") from None


def _tokens_to_map(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """ViT activations are tokens (N, prefix + h*w, C); Grad-CAM wants a map (N, C, h, w)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return None
    prefix = getattr(model, "num_prefix_tokens", 1)

    def transform(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3:
            return t
        return t[:, prefix:].reshape(t.size(0), *grid, t.size(2)).permute(0, 3, 1, 2)
    return transform


# ------------------------------------------------------------------------------------------------ target
def log_probs(head: Head, logits: torch.Tensor, which: str | None = None) -> torch.Tensor:
    """(N, k) log-probabilities of the 18 classes (which=None) or of one head's values (its marginal)."""
    logits = logits.float()
    if head.kind == "multitask" and which is not None:
        return F.log_softmax(head.split(logits)[which], dim=1)
    lp = F.log_softmax(logits, dim=1) if head.kind == "multiclass" else head.probs(logits).clamp_min(1e-30).log()
    if which is None:
        return lp
    member = torch.from_numpy(L.head_maps()[which]).to(lp)  # (18, k) 0/1: log gives 0 / -inf
    return torch.logsumexp(lp[:, :, None] + member.log()[None], dim=1)


class ChosenValueTarget:
    """Grad-CAM target for one image: the log-probability of the value the model chose (its maximum)."""

    def __init__(self, head: Head, which: str | None):
        self.head, self.which = head, which

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return log_probs(self.head, logits[None], self.which)[0].max()


@dataclass
class Cams:
    maps: np.ndarray  # (N, H, W) float32 in [0, 1], at the input size
    probs: np.ndarray  # (N, k) probabilities of the explained decision (18 classes, or the head's values)
    layer: str


def grad_cam(model: torch.nn.Module, head: Head, images: np.ndarray, normalize: torch.nn.Module,
             which: str | None = None, layer: str | None = None, batch_size: int = 32) -> Cams:
    """Grad-CAM maps of uint8 NHWC `images` for the model's own decision."""
    from pytorch_grad_cam import GradCAM

    name, module = resolve_layer(model, layer)
    cam = GradCAM(model, [module], reshape_transform=_tokens_to_map(model))
    maps, probs = [], []
    try:  # not `with cam`: its __exit__ swallows IndexErrors
        for start in range(0, len(images), batch_size):
            x = normalize(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2))
            try:
                maps.append(cam(x, [ChosenValueTarget(head, which)] * len(x)))
            except ValueError as e:  # grad-cam's word for "this layer's output is not a map"
                raise CompError(f"--layer {name}: its output is not a spatial map ({e}); pick a convolutional block "
                                f"such as {auto_layer_name(model) or _candidates(model)}") from None
            probs.append(log_probs(head, cam.outputs.detach(), which).exp().cpu().numpy())
    finally:
        cam.activations_and_grads.release()
    return Cams(np.concatenate(maps).astype(np.float32), np.concatenate(probs), name)


# ---------------------------------------------------------------------------------------- which images
@dataclass
class Picked:
    paths: list[str]
    labels: np.ndarray  # 18-class ids; -1 where the truth is unknown
    names: list[str]  # short display names


def _sample(n_total: int, n: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n_total, min(n, n_total), replace=False))


def picked_rows(rows: pd.DataFrame) -> Picked:
    """Rows of a train frame, named like 000123/mask1."""
    names = [f"{person.split('_')[0]}/{stem}" for person, stem in zip(rows["person"], rows["stem"], strict=True)]
    return Picked(rows["path"].tolist(), rows["label"].to_numpy(np.int64), names)


def pick_validation(cfg: Config, fold: int, n: int, seed: int = 0) -> Picked:
    df = runs.train_frame(cfg)
    val = df[df["fold"] == fold]
    return picked_rows(val.iloc[_sample(len(val), n, seed)])


def pick_eval(cfg: Config, root: Path | str | None, n: int, seed: int = 0) -> Picked:
    ev = runs.eval_frame(cfg, root)
    rows = ev.iloc[_sample(len(ev), n, seed)]
    return Picked(rows["path"].tolist(), np.full(len(rows), -1, np.int64), [i[:14] for i in rows["ImageID"]])


def label_from_path(path: Path, bins: L.AgeBins) -> int:
    """The class of an image inside a train folder (<id>_<gender>_<race>_<age>/<shot>), else -1."""
    person = parse_folder_name(path.parent.name)
    if isinstance(person, str) or path.stem not in L.STEM_TO_MASK:
        return -1
    _, gender, _, age = person
    return L.encode(L.STEM_TO_MASK[path.stem], L.GENDER_TO_ID[gender], bins.group(age))


def pick_files(paths: list[Path | str], bins: L.AgeBins) -> Picked:
    """Image files, and the images under folders, in the order given."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in L.IMAGE_EXTS and not f.name.startswith("."))
        elif p.is_file():
            files.append(p)
        else:
            raise CompError(f"--images {p}: no such file or folder")
    if not files:
        raise CompError(f"--images {', '.join(map(str, paths))}: no .jpg/.jpeg/.png images there")
    labels = np.array([label_from_path(f, bins) for f in files], np.int64)
    return Picked([str(f) for f in files], labels, [f"{f.parent.name.split('_')[0]}/{f.stem}"[:18] for f in files])


# ----------------------------------------------------------------------------------------------- panels
@dataclass
class Panel:
    tile: np.ndarray  # uint8 RGB: [photo | photo with the CAM], enlarged
    caption: str
    status: str  # right | wrong | unknown
    confidence: float

    @property
    def color(self) -> str:
        return STATUS_COLORS[self.status]


def decision_names(which: str | None, bins: L.AgeBins) -> list[str]:
    """Short names of the decision's values: 'wear/female/30-59' per class, or a head's value names."""
    if which is None:
        return [name.split(" ", 1)[1] for name in L.class_names(bins)]
    return list(L.head_names(which, bins))


def decision_values(labels: np.ndarray, which: str | None) -> np.ndarray:
    """18-class ids → the explained decision's values (unchanged for the class, a head's value else); -1 stays."""
    if which is None:
        return labels
    known = labels >= 0
    out = np.full(len(labels), -1, np.int64)
    if known.any():
        out[known] = L.decode_heads(labels[known])[which]
    return out


def overlay_tile(image: np.ndarray, cam: np.ndarray, height: int = TILE_HEIGHT) -> np.ndarray:
    """[photo | photo with the CAM], both enlarged to `height` so a 48x64 image is readable."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = image.shape[:2]
    size = (max(1, round(w * height / h)), height)
    big = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    heat = np.clip(cv2.resize(cam, size, interpolation=cv2.INTER_LINEAR), 0, 1)
    over = show_cam_on_image(big.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.55)
    return np.concatenate([big, np.full((height, 4, 3), 255, np.uint8), over], axis=1)


def explain_picked(model: torch.nn.Module, head: Head, cfg: Config, picked: Picked, which: str | None = None,
                   layer: str | None = None) -> tuple[list[Panel], Cams]:
    """Grad-CAM of each picked image for the model's decision, as captioned panels."""
    images = np.stack([load_resized(p, tuple(cfg.data.size)) for p in picked.paths])
    cams = grad_cam(model, head, images, normalizer(cfg, model), which, layer)
    names = decision_names(which, runs.bins_of(cfg))
    true, pred = decision_values(picked.labels, which), cams.probs.argmax(1)
    panels = []
    for i, name in enumerate(picked.names):
        status = "unknown" if true[i] < 0 else "right" if true[i] == pred[i] else "wrong"
        conf = float(cams.probs[i, pred[i]])
        caption = (f"true {names[true[i]] if true[i] >= 0 else '?'}\npred {names[pred[i]]} ({conf:.0%})\n{name}")
        panels.append(Panel(overlay_tile(images[i], cams.maps[i]), caption, status, conf))
    return panels, cams


def save_pages(panels: list[Panel], folder: Path, stem: str, title: str) -> list[Path]:
    """PNG grids of up to TILES_PER_PAGE panels: stem_01.png, stem_02.png, ..."""
    from .plots import save_image_grid

    pages = math.ceil(len(panels) / TILES_PER_PAGE)
    out = []
    for k in range(pages):
        page = panels[k * TILES_PER_PAGE:(k + 1) * TILES_PER_PAGE]
        out.append(save_image_grid([p.tile for p in page], [p.caption for p in page], [p.color for p in page],
                                   folder / f"{stem}_{k + 1:02d}.png", title + (f" ({k + 1}/{pages})" if pages > 1 else "")))
    return out


def decision_label(which: str | None) -> str:
    return "18-class decision" if which is None else f"{which} head"


# ---------------------------------------------------------------------------------------------- command
@dataclass
class ExplainResult:
    out: Path
    pngs: list[Path]
    source: str
    decision: str
    layer: str
    images: int
    known: int  # images whose truth is known
    mistakes: int


def _pick(cfg: Config, fold: int, data: Path | None, images: list[Path] | None, use_eval: bool, sample: int,
          seed: int) -> tuple[Picked, str]:
    if images and use_eval:
        raise CompError("give --images or --eval, not both")
    if images:
        return pick_files(images, runs.bins_of(cfg)), "given with --images"
    if use_eval:
        return pick_eval(cfg, data, sample, seed), f"eval images of {data or cfg.data.root}"
    if data is not None:  # validation images of another copy of the dataset
        cfg.data.root = str(data)
    return pick_validation(cfg, fold, sample, seed), f"validation fold {fold}"


def explain(run: Path | str, out: Path | str, data: Path | str | None = None, images: list[Path | str] | None = None,
            use_eval: bool = False, sample: int = 16, head: str | None = None, layer: str | None = None,
            fold: int | None = None, ckpt: str = "best", seed: int = 0, force: bool = False) -> ExplainResult:
    """Grad-CAM grids for a sample of a run's validation images (default), eval images or given files."""
    if head is not None and head not in L.HEADS:
        raise CompError(f"--head {head}: choose one of {', '.join(L.HEADS)}")
    if sample < 1:
        raise CompError(f"--sample {sample}: explain at least one image")
    run = Path(run)
    cfg = read_run_config(run)
    fold = runs.trained_folds(run)[0] if fold is None else fold
    model, model_head, _ = runs.load_run(run, fold, ckpt)
    use_eval = use_eval or (fold == runs.FULL and not images)  # a full-data run held nobody out: its eval images
    picked, source = _pick(cfg, fold, Path(data) if data else None, images, use_eval, sample, seed)
    panels, cams = explain_picked(model, model_head, cfg, picked, head, layer)
    title = f"{run.name} fold {runs.fold_name(fold)} ({cfg.model.name}): Grad-CAM of the {decision_label(head)} at {cams.layer}"
    with atomic_dir(out, force) as tmp:
        pngs = [Path(out) / p.name for p in save_pages(panels, tmp, "gradcam", title)]
    known = sum(p.status != "unknown" for p in panels)
    return ExplainResult(Path(out), pngs, source, decision_label(head), cams.layer, len(panels), known,
                         sum(p.status == "wrong" for p in panels))
