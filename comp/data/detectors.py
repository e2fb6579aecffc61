"""Face detectors behind one interface, `detect(images) -> [((x0, y0, x1, y1), score) | None]` on a batch
of same-size RGB arrays, in a registry (`DETECTORS`, the single source of `--detector` / `data.crop`
names). `mtcnn` (facenet-pytorch) and `haar` (OpenCV) run on weights shipped in their wheels, `yolo`
(ultralytics) on the user's weights file. Heavy libraries are imported when a detector is made, so the
names cost nothing to list."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CompError
from ..registry import Registry

MIN_FACE = 0.2  # smallest face searched for, as a share of the image's shorter side
Box = tuple[float, float, float, float]


DETECTORS = Registry("face detector", "--detector")
register = DETECTORS.register


def make_detector(name: str, weights: Path | str | None = None):
    """The detector registered under `name`; `weights` only for those that take a file."""
    return DETECTORS.resolve(name)(weights)


def _largest(boxes: np.ndarray, scores: np.ndarray) -> tuple[Box, float] | None:
    # one person per photo: the largest face is the subject, smaller ones are posters or noise
    if len(boxes) == 0:
        return None
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    i = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
    return tuple(float(v) for v in boxes[i]), float(np.asarray(scores, dtype=np.float64).reshape(-1)[i])


def _no_weights(name: str, weights) -> None:
    if weights is not None:
        raise CompError(f"--weights {weights}: the {name} detector ships its own weights; --weights is for yolo")


def _min_face(image: np.ndarray) -> int:
    return max(12, int(MIN_FACE * min(image.shape[:2])))


@register("mtcnn")
class MTCNNDetector:
    """facenet-pytorch's MTCNN; a batch runs as one tensor. Slightly lower thresholds than the library's
    (0.6, 0.7, 0.7): masked faces score lower, and keeping the largest face keeps false hits rare."""

    def __init__(self, weights=None):
        _no_weights("mtcnn", weights)
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            raise CompError("detector mtcnn needs facenet-pytorch: `make setup` installs it "
                            "(pip install --no-deps facenet-pytorch)") from None
        self.model = MTCNN(device="cpu", thresholds=[0.5, 0.6, 0.6])

    def detect(self, images: list[np.ndarray]) -> list[tuple[Box, float] | None]:
        self.model.min_face_size = _min_face(images[0])
        boxes, scores = self.model.detect(np.stack(images))
        return [None if b is None else _largest(b, s) for b, s in zip(boxes, scores, strict=True)]


@register("haar")
class HaarDetector:
    """OpenCV's frontal-face Haar cascade (fast, weaker on masks); the score is the cascade's level weight."""

    def __init__(self, weights=None):
        _no_weights("haar", weights)
        import cv2

        self.model = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))

    def detect(self, images: list[np.ndarray]) -> list[tuple[Box, float] | None]:
        import cv2

        out = []
        for img in images:
            grey = cv2.equalizeHist(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
            m = _min_face(img)
            rects, _, weights = self.model.detectMultiScale3(grey, 1.1, 3, minSize=(m, m), outputRejectLevels=True)
            rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
            out.append(_largest(np.c_[rects[:, :2], rects[:, :2] + rects[:, 2:]], np.asarray(weights)))
        return out


@register("yolo")
class YoloDetector:
    """An ultralytics YOLO model from the user's weights file (a face model, or a person model for body crops)."""

    def __init__(self, weights=None):
        if weights is None:
            raise CompError("detector yolo needs a weights file: --weights PATH (pipelines: data.crop: yolo:PATH)")
        if not Path(weights).is_file():
            raise CompError(f"{weights}: YOLO weights file not found; give the path of a .pt file")
        try:
            from ultralytics import YOLO
        except ImportError:
            raise CompError("detector yolo needs ultralytics: pip install ultralytics (the project's yolo extra)") from None
        self.model = YOLO(str(weights))

    def detect(self, images: list[np.ndarray]) -> list[tuple[Box, float] | None]:
        # ultralytics reads numpy arrays as OpenCV's BGR
        results = self.model.predict([img[:, :, ::-1] for img in images], verbose=False)
        return [_largest(r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy()) for r in results]


