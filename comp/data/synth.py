"""A procedural synthetic dataset in the competition's exact layout, for tests and benchmarks.

Generative model
----------------
Each person is drawn from their own random streams (`np.random.default_rng([seed, role, index, stream])`),
so adding people never changes the earlier ones and the same arguments give byte-identical files.

1. Labels. gender: female with p = 0.61. age: a mixture (47 % 18-29, 20 % 30-49, 26 % 50-59 crowded
   towards 59, 7 % 60+ with half of those exactly 60), so ages pile up on both sides of the thresholds.
   race: Asian / Black / White / Other, which sets the skin-tone range.
2. Identity ("look"): everything the seven shots of one person share. Every cue is statistical:
   - gender: hair style (long hair for ~70 % of women and ~7 % of men), face width and jaw shape,
     eyebrow thickness, eyeliner, earrings, lipstick, shoulder width, stubble or beard for some men.
   - age: an "apparent age" (true age + person noise of a few years) drives forehead lines, crow's
     feet, eye bags and cheek folds (more and darker with age), greying hair (onset ~55 ± 4.5),
     a receding hairline or baldness for some older men, paler skin and more glasses.
   - nuisance: skin tone, hair colour, clothes, background (gradient, soft texture, a wall edge),
     five masks of different colours / patterns / shapes (surgical with pleats, cloth, dotted, KF94).
3. Shot: what differs between the seven photos of one session: face position, scale, rotation and
   yaw, background shift, brightness, lighting gradient, colour cast, blur, sensor noise, JPEG quality.
4. Mask state: mask1..mask5 cover nose and mouth; incorrect_mask is pulled under the nose or down
   on the chin (one of the two per person); normal shows the whole face. Beard and lips hide under a mask.
5. Label noise: a chosen fraction of train people are *recorded* with a flipped gender or an age in a
   neighbouring group, while their pictures show the true person. Eval truth is always clean.

Pictures are drawn with PIL polygons at twice the size (every shape goes through one affine pose,
so rotation is exact), halved with a box filter, then the camera effects run as numpy array maths.
"""
from __future__ import annotations

import csv
import hashlib
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import CompError
from ..fileio import atomic_dir
from .labels import GENDERS, MASK_STEMS, STEM_TO_MASK, AgeBins, encode

RACES = ("Asian", "Black", "White", "Other")
RACE_SHARES = (0.40, 0.15, 0.30, 0.15)
FEMALE_SHARE = 0.61
SUPERSAMPLE = 2
TRIANGULAR_SD = 256 / 6**0.5  # of the difference of two uniform random bytes
TRAIN, EVAL = 0, 1  # roles in the seed of a person's random streams
LOOK, SHOTS, NOISE_KEY, NOISE_KIND = 0, 1, 2, 3  # a person's random streams

# (lightest, darkest) skin per race; a person's tone is a random point between them.
SKIN = {
    "Asian": ((238, 204, 174), (196, 150, 112)),
    "Black": ((150, 100, 70), (70, 45, 32)),
    "White": ((248, 220, 200), (214, 168, 136)),
    "Other": ((214, 166, 128), (140, 94, 64)),
}
HAIR = ((25, 20, 18), (45, 32, 25), (80, 55, 38), (120, 85, 55), (170, 130, 80), (200, 170, 110),
        (130, 60, 35))
HAIR_SHARES = {
    "Asian": (0.55, 0.35, 0.08, 0.02, 0.0, 0.0, 0.0),
    "Black": (0.70, 0.28, 0.02, 0.0, 0.0, 0.0, 0.0),
    "White": (0.05, 0.20, 0.30, 0.20, 0.12, 0.08, 0.05),
    "Other": (0.35, 0.40, 0.20, 0.05, 0.0, 0.0, 0.0),
}
GREY_HAIR = (196, 196, 192)
IRIS = ((70, 45, 30), (40, 28, 20), (90, 120, 150), (90, 110, 70))
BACKGROUNDS = ((235, 235, 230), (200, 200, 195), (225, 215, 190), (180, 200, 215), (150, 150, 150),
               (210, 190, 170), (60, 70, 80), (190, 215, 190), (240, 230, 240), (120, 100, 90))
MASK_COLOURS = {
    "surgical": ((245, 245, 245), (165, 200, 230), (40, 40, 45), (235, 190, 205), (170, 215, 200)),
    "cloth": ((25, 25, 30), (110, 110, 115), (40, 50, 90), (215, 200, 175), (140, 40, 50), (230, 230, 230)),
    "dotted": ((245, 245, 245), (30, 30, 35), (60, 80, 140), (200, 60, 70), (240, 220, 120)),
    "kf94": ((250, 250, 250), (30, 30, 32), (200, 200, 205), (225, 215, 200)),
}


@dataclass
class SynthSummary:
    root: Path
    train_people: int
    train_images: int
    eval_images: int
    seconds: float


@dataclass(frozen=True)
class MaskStyle:
    kind: str
    colour: tuple
    accent: tuple  # pleats, seams and dots


@dataclass(frozen=True)
class Look:
    """Everything the seven shots of one person share. Lengths are in face units: the face spans
    y = -1 (top of forehead) .. +1 (chin) and x = -face_w .. +face_w; y grows downwards."""

    skin: tuple
    face_w: float
    jaw_n: float  # exponent of the lower face: 2 = round, 3+ = square
    jaw_taper: float  # how much the jaw narrows towards the chin
    neck_w: float
    shoulder_w: float
    clothes: tuple
    clothes_accent: tuple
    stripes: bool
    v_neck: bool
    hair: tuple
    grey: float  # share of grey strands
    hair_style: str  # short, bob, long or bald
    hair_len: float  # where long / bob hair ends (y)
    hair_volume: float
    hairline: float  # y of the hairline in the middle of the forehead
    temple_recess: float
    fringe: bool
    brow_thick: float
    brow_arch: float
    brow_colour: tuple
    iris: tuple
    eyeliner: bool
    eye_w: float
    lips: tuple
    mouth_w: float
    beard: int  # 0 none, 1 stubble, 2 full
    forehead_lines: int
    crows_feet: int
    wrinkle_contrast: float
    eye_bags: float
    folds: float
    glasses: tuple | None  # frame colour
    earrings: tuple | None
    masks: tuple  # five MaskStyle, one per mask1..mask5
    incorrect_on_chin: bool
    bg: tuple  # two wall colours
    bg_angle: float
    bg_waves: np.ndarray  # (3, 4): amplitude, x frequency, y frequency, phase of soft wall texture
    bg_edge: tuple | None  # (x position in 0..1, colour) of a door frame / second wall


@dataclass(frozen=True)
class Shot:
    """What differs between the photos of one session."""

    dx: float  # face centre offset, fraction of the frame
    dy: float
    scale: float
    angle: float  # radians
    yaw: float  # face units the nose moves sideways
    bg_shift: float
    gain: float
    grad_x: float
    grad_y: float
    cast: np.ndarray  # (3,) per-channel gain
    blur: float  # Gaussian radius in pixels of a 128-pixel-high picture
    noise: float  # sigma, grey levels
    quality: int


@dataclass(frozen=True)
class Person:
    gender: int  # true: what the pictures show
    age: int
    race: str
    recorded_gender: int  # what train.csv says (differs under label noise)
    recorded_age: int
    look: Look
    shots: tuple  # one Shot per MASK_STEMS entry


# ---------------------------------------------------------------------------------------------------
# Sampling people
# ---------------------------------------------------------------------------------------------------

def _rng(seed: int, role: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, role, index, stream])


def _sample_age(rng: np.random.Generator) -> int:
    part = rng.choice(4, p=(0.47, 0.20, 0.26, 0.07))
    if part == 0:
        return int(18 + 12 * rng.beta(1.6, 1.0))
    if part == 1:
        return int(rng.uniform(30, 50))
    if part == 2:
        return int(50 + 10 * rng.beta(1.4, 1.0))
    return 60 if rng.random() < 0.5 else int(min(80.0, 61 + rng.exponential(7)))


def _mix(a, b, t: float) -> tuple:
    """Colour a blended towards b by t (0..1)."""
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))


def _jitter(rng: np.random.Generator, colour, amount: float = 12) -> tuple:
    return tuple(int(np.clip(c + rng.normal(0, amount), 0, 255)) for c in colour)


def _desaturate(colour, t: float) -> tuple:
    grey = sum(colour) / 3
    return _mix(colour, (grey, grey, grey), t)


def _sample_hair(rng, female: bool, apparent: float) -> dict:
    older = float(np.clip((apparent - 40) / 30, 0, 1))
    if female:
        shares = (0.72 - 0.25 * older, 0.18 + 0.12 * older, 0.10 + 0.13 * older)
        style = rng.choice(("long", "bob", "short"), p=shares)
    else:
        bald = 0.25 * older
        style = rng.choice(("long", "bob", "short", "bald"), p=(0.05, 0.07, 0.88 - bald, bald))
    recede = 0.0
    if not female and rng.random() < 0.6:
        recede = float(np.clip((apparent - 30) / 40 + rng.normal(0, 0.2), 0, 1))
    return {
        "hair_style": str(style),
        "hair_len": float(rng.uniform(1.2, 2.4) if style == "long" else rng.uniform(0.35, 0.8)),
        "hair_volume": float(rng.uniform(0.06, 0.22) if female else rng.uniform(0.03, 0.14)),
        "hairline": float(-0.6 + rng.normal(0, 0.04) - 0.3 * recede),
        "temple_recess": float(rng.uniform(0.0, 0.05) + 0.2 * recede),
        "fringe": bool(style != "bald" and rng.random() < (0.35 if female else 0.15)),
        "grey": float(1 / (1 + np.exp(-(apparent - rng.normal(55, 4.5)) / 4))),
    }


def _sample_masks(rng) -> tuple:
    """Five masks of five looks (two surgical colours, cloth, dotted, KF94), shuffled over mask1..5."""
    kinds = ["surgical", "surgical", "cloth", "dotted", "kf94"]
    rng.shuffle(kinds)
    styles, used = [], set()
    for kind in kinds:
        options = [c for c in MASK_COLOURS[kind] if (kind, c) not in used]
        colour = options[rng.integers(len(options))]
        used.add((kind, colour))
        accent = _mix(colour, (0, 0, 0), 0.25) if kind != "dotted" else _jitter(rng, (220, 60, 60), 80)
        styles.append(MaskStyle(kind, _jitter(rng, colour, 6), accent))
    return tuple(styles)


def _sample_background(rng) -> dict:
    first, second = rng.choice(len(BACKGROUNDS), size=2, replace=False)
    waves = np.stack([rng.uniform(4, 16, 3), rng.uniform(-6, 6, 3), rng.uniform(-6, 6, 3),
                      rng.uniform(0, 2 * np.pi, 3)], axis=1)
    edge = None
    if rng.random() < 0.3:
        edge = (float(rng.choice((rng.uniform(0.03, 0.2), rng.uniform(0.8, 0.97)))),
                _jitter(rng, BACKGROUNDS[rng.integers(len(BACKGROUNDS))], 20))
    return {"bg": (_jitter(rng, BACKGROUNDS[first]), _jitter(rng, BACKGROUNDS[second])),
            "bg_angle": float(rng.uniform(0, 2 * np.pi)), "bg_waves": waves, "bg_edge": edge}


def _sample_look(rng: np.random.Generator, gender: int, age: int, race: str) -> Look:
    female = gender == 1
    apparent = age + rng.normal(0, 4.5)
    aging = float(np.clip((apparent - 20) / 50, 0, 1.3))
    light, dark = SKIN[race]
    skin = _desaturate(_jitter(rng, _mix(light, dark, rng.random()), 6), 0.25 * aging)
    hair = _jitter(rng, HAIR[rng.choice(len(HAIR), p=HAIR_SHARES[race])], 8)
    hair_traits = _sample_hair(rng, female, apparent)
    lipstick = female and rng.random() < 0.45
    lips = _jitter(rng, (185, 40, 60), 20) if lipstick else _mix(skin, (170, 80, 80), 0.35)
    beard = 0 if female else int(rng.choice(3, p=(0.7, 0.18, 0.12)))
    return Look(
        skin=skin,
        face_w=float(rng.normal(0.80 if female else 0.86, 0.035)),
        jaw_n=float(rng.normal(2.3 if female else 2.9, 0.3)),
        jaw_taper=float(rng.normal(0.22 if female else 0.12, 0.06)),
        neck_w=float(rng.normal(0.36 if female else 0.44, 0.04)),
        shoulder_w=float(rng.normal(1.9 if female else 2.2, 0.15)),
        clothes=tuple(int(c) for c in rng.integers(20, 236, 3)),
        clothes_accent=tuple(int(c) for c in rng.integers(20, 236, 3)),
        stripes=bool(rng.random() < 0.25),
        v_neck=bool(rng.random() < 0.4),
        hair=hair,
        **hair_traits,
        brow_thick=float(max(0.025, rng.normal(0.042 if female else 0.062, 0.01))),
        brow_arch=float(rng.normal(0.06 if female else 0.03, 0.015)),
        brow_colour=_mix(_mix(hair, (20, 15, 10), 0.3), GREY_HAIR, 0.5 * hair_traits["grey"]),
        iris=IRIS[rng.integers(2 if race != "White" else len(IRIS))],
        eyeliner=bool(female and rng.random() < 0.45),
        eye_w=float(rng.normal(1.0, 0.08)),
        lips=lips,
        mouth_w=float(rng.normal(0.22, 0.025)),
        beard=beard,
        forehead_lines=int(np.clip(round((apparent - 26) / 8 + rng.normal(0, 0.8)), 0, 5)),
        crows_feet=int(np.clip(round((apparent - 33) / 10 + rng.normal(0, 0.7)), 0, 3)),
        wrinkle_contrast=float(np.clip(0.08 + 0.38 * aging + rng.normal(0, 0.04), 0.03, 0.6)),
        eye_bags=float(np.clip((apparent - 27) / 70 + rng.normal(0, 0.04), 0, 0.5)),
        folds=float(np.clip((apparent - 25) / 120 + rng.normal(0, 0.04), 0, 0.45)),
        glasses=_jitter(rng, (40, 35, 35), 40) if rng.random() < 0.1 + 0.35 * min(aging, 1) else None,
        earrings=_jitter(rng, (230, 200, 90), 25) if rng.random() < (0.35 if female else 0.03) else None,
        masks=_sample_masks(rng),
        incorrect_on_chin=bool(rng.random() < 0.5),
        **_sample_background(rng),
    )


def _sample_shot(rng: np.random.Generator) -> Shot:
    return Shot(
        dx=float(rng.normal(0, 0.025)), dy=float(rng.normal(0, 0.02)), scale=float(rng.normal(1, 0.04)),
        angle=float(rng.normal(0, 0.06)), yaw=float(rng.normal(0, 0.05)), bg_shift=float(rng.normal(0, 0.15)),
        gain=float(rng.uniform(0.78, 1.15)), grad_x=float(rng.normal(0, 0.2)),
        grad_y=float(rng.normal(0, 0.12)),
        cast=rng.normal(1, 0.04, 3), blur=float(rng.uniform(0.15, 0.6) if rng.random() < 0.35 else 0.0),
        noise=float(rng.uniform(1.5, 7)), quality=int(rng.integers(78, 96)),
    )


def _noisy_label(rng: np.random.Generator, gender: int, age: int, bins: AgeBins) -> tuple[int, int]:
    """A wrong record of (gender, age): the gender flipped, or the age moved to a neighbouring group."""
    if rng.random() < 0.5:
        return 1 - gender, age
    group = bins.group(age)
    down = group == 2 or (group == 1 and rng.random() < 0.5)
    if down:
        return gender, int((bins.young_below if group == 1 else bins.old_from) - rng.integers(1, 6))
    return gender, int((bins.young_below if group == 0 else bins.old_from) + rng.integers(0, 5))


def _sample_person(seed: int, role: int, index: int, noisy: bool) -> Person:
    rng = _rng(seed, role, index, LOOK)
    gender = int(rng.random() < FEMALE_SHARE)
    age = _sample_age(rng)
    race = RACES[rng.choice(len(RACES), p=RACE_SHARES)]
    look = _sample_look(rng, gender, age, race)
    shot_rng = _rng(seed, role, index, SHOTS)
    shots = tuple(_sample_shot(shot_rng) for _ in MASK_STEMS)
    recorded = (gender, age)
    if noisy:
        recorded = _noisy_label(_rng(seed, role, index, NOISE_KIND), gender, age, AgeBins())
    return Person(gender, age, race, recorded[0], recorded[1], look, shots)


def _noisy_people(seed: int, people: int, label_noise: float) -> set[int]:
    """Exactly round(label_noise * people) train people, those with the smallest per-person key."""
    keys = [_rng(seed, TRAIN, i, NOISE_KEY).random() for i in range(people)]
    return set(np.argsort(keys, kind="stable")[: int(round(label_noise * people))].tolist())


# ---------------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------------

def _arc(cx: float, cy: float, rx: float, ry: float, t0: float = 0.0, t1: float = 2 * np.pi, n: int = 32):
    t = np.linspace(t0, t1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _face_lower(look: Look, grow: float = 1.0, n: int = 24) -> np.ndarray:
    """Right cheek (y = 0) round the chin to the left cheek: a tapered superellipse."""
    t = np.linspace(0, np.pi, n)
    c, s = np.cos(t), np.sin(t)
    x = look.face_w * np.sign(c) * np.abs(c) ** (2 / look.jaw_n) * (1 - look.jaw_taper * s**2)
    return np.stack([x, s], axis=1) * grow


def _face_outline(look: Look) -> np.ndarray:
    upper = _arc(0, 0, look.face_w, 1.0, np.pi, 2 * np.pi, 24)
    return np.concatenate([upper, _face_lower(look)])


def _inside(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Even-odd test of many points against one polygon."""
    x, y = points[:, :1], points[:, 1:]
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    crosses = ((y1 > y) != (y2 > y)) & (x < (x2 - x1) * (y - y1) / np.where(y2 == y1, 1e-9, y2 - y1) + x1)
    return crosses.sum(axis=1) % 2 == 1


class Painter:
    """PIL drawing in face units: one affine pose (offset, scale, rotation) maps them to canvas pixels;
    `depth` moves a feature sideways with the head's yaw (the nose most, the face outline not at all)."""

    def __init__(self, canvas: Image.Image, shot: Shot):
        w, h = canvas.size
        self.draw = ImageDraw.Draw(canvas)
        self.unit = 0.2 * h * shot.scale
        self.centre = np.array([w * (0.5 + shot.dx), h * (0.43 + shot.dy)])
        c, s = np.cos(shot.angle), np.sin(shot.angle)
        self.rot = np.array([[c, -s], [s, c]])
        self.yaw = shot.yaw

    def _px(self, pts: np.ndarray, depth: float) -> list:
        p = np.asarray(pts, dtype=np.float64) + [self.yaw * depth, 0.0]
        return (p @ self.rot.T * self.unit + self.centre).ravel().tolist()

    def poly(self, pts, fill, depth: float = 0.0) -> None:
        self.draw.polygon(self._px(pts, depth), fill=fill)

    def line(self, pts, fill, width: float, depth: float = 0.0) -> None:
        px_width = max(1, int(round(width * self.unit)))
        self.draw.line(self._px(pts, depth), fill=fill, width=px_width, joint="curve")

    def oval(self, cx, cy, rx, ry, fill, depth: float = 0.0) -> None:
        self.poly(_arc(cx, cy, rx, ry, n=20), fill, depth)


def _background(look: Look, shot: Shot, size: tuple[int, int]) -> Image.Image:
    """Soft wall: a two-colour gradient, a few low-frequency waves and maybe a second wall's edge,
    computed on a coarse grid and smoothly enlarged (backgrounds are out of focus)."""
    w, h = size
    gw, gh = 16, max(4, round(16 * h / w))
    x, y = np.meshgrid(np.linspace(0, 1, gw), np.linspace(0, h / w, gh))
    x = x + shot.bg_shift * 0.1
    along = (x - 0.5) * np.cos(look.bg_angle) + (y - 0.5) * np.sin(look.bg_angle)
    t = np.clip(0.5 + along + shot.bg_shift, 0, 1)
    a, b = (np.array(c, dtype=np.float64) for c in look.bg)
    img = a + (b - a) * t[..., None]
    amp, fx, fy, phase = look.bg_waves.T
    waves = (amp * np.sin(x[..., None] * fx + y[..., None] * fy + phase)).sum(axis=-1)
    img += waves[..., None]
    if look.bg_edge is not None:
        pos, colour = look.bg_edge
        side = (x < pos) if pos < 0.5 else (x > pos)
        img[side] = colour
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return small.resize((w // SUPERSAMPLE, h // SUPERSAMPLE), Image.BILINEAR).resize(size, Image.NEAREST)


def _draw_clothes(p: Painter, look: Look) -> None:
    sw = look.shoulder_w
    top = _arc(0, 2.05, sw, 0.55, np.pi, 2 * np.pi, 24)
    body = np.concatenate([top, [[sw, 6.0], [-sw, 6.0]]])
    p.poly(body, look.clothes)
    if look.stripes:
        for y in np.arange(1.75, 4.0, 0.28):
            p.line([[-sw, y], [sw, y]], look.clothes_accent, 0.08)


def _hair_fill(look: Look) -> tuple:
    return _mix(look.hair, GREY_HAIR, 0.7 * look.grey)


def _strand_colour(rng: np.random.Generator, look: Look) -> tuple:
    if rng.random() < look.grey:
        return _jitter(rng, GREY_HAIR, 10)
    return _jitter(rng, look.hair, 14)


def _draw_back_hair(p: Painter, look: Look, rng: np.random.Generator) -> None:
    """Hair behind the head and down over the shoulders (long hair, bob)."""
    if look.hair_style not in ("long", "bob"):
        return
    half = look.face_w + look.hair_volume + 0.12
    bottom = look.hair_len
    top = _arc(0, -0.1, half, 1.0 + look.hair_volume, np.pi, 2 * np.pi, 20)
    shape = np.concatenate([top, [[half * 1.08, bottom], [-half * 1.08, bottom]]])
    p.poly(shape, _hair_fill(look))
    for _ in range(14):
        x = rng.uniform(-half, half)
        ys = np.linspace(-0.2, bottom - 0.05, 6)
        xs = np.clip(x * 1.05 + 0.03 * np.sin(ys * 5 + rng.uniform(0, 6)), -half, half)
        p.line(np.stack([xs, ys], 1), _strand_colour(rng, look), 0.025)


def _draw_neck_and_ears(p: Painter, look: Look) -> None:
    """The neck ends in a V or round neckline that hides its lower corners; ears and earrings."""
    nw, neck = look.neck_w, _mix(look.skin, (0, 0, 0), 0.12)
    p.poly([[-nw, 0.4], [nw, 0.4], [nw * 1.04, 1.58], [-nw * 1.04, 1.58]], neck)
    if look.v_neck:
        p.poly([[-nw * 1.4, 1.4], [nw * 1.4, 1.4], [0, 2.2]], neck)
    else:
        p.oval(0, 1.5, nw * 1.25, 0.35, neck)
    for side in (-1, 1):
        p.oval(side * (look.face_w + 0.02), 0.03, 0.09, 0.18, _mix(look.skin, (0, 0, 0), 0.12))
        if look.earrings is not None:
            p.oval(side * look.face_w * 1.0, 0.27, 0.035, 0.035, look.earrings)


def _draw_face(p: Painter, look: Look) -> None:
    p.poly(_face_outline(look), look.skin)


def _draw_wrinkles(p: Painter, look: Look) -> None:
    """Forehead lines, crow's feet, eye bags and cheek folds: more and darker with age."""
    line = _mix(look.skin, (60, 30, 20), look.wrinkle_contrast)
    for k in range(look.forehead_lines):
        y = -0.45 - 0.07 * k
        if y < look.hairline + 0.05:
            break
        xs = np.linspace(-0.38, 0.38, 7)
        p.line(np.stack([xs, y + 0.03 * (xs / 0.38) ** 2], 1), line, 0.03, depth=0.3)
    for side in (-1, 1):
        for k in range(look.crows_feet):
            angle = (k - 1) * 0.35
            x0 = side * (0.33 + 0.13 * look.eye_w)
            tip = [x0 + side * 0.09 * np.cos(angle), -0.15 + 0.09 * np.sin(angle)]
            p.line([[x0, -0.15], tip], line, 0.022, depth=0.6)
        if look.eye_bags > 0.03:
            bag = _mix(look.skin, (70, 40, 40), look.eye_bags)
            under_eye = _arc(side * 0.33, -0.1, 0.1 * look.eye_w, 0.06, 0.4, np.pi - 0.4, 8)
            p.line(under_eye, bag, 0.045, depth=0.6)
        if look.folds > 0.03:
            fold = _mix(look.skin, (70, 40, 30), look.folds)
            p.line([[side * 0.15, 0.22], [side * 0.25, 0.4], [side * 0.27, 0.58]], fold, 0.02, depth=0.7)


def _draw_beard(p: Painter, look: Look) -> None:
    if look.beard == 0:
        return
    colour = _mix(look.skin, _mix(look.hair, GREY_HAIR, look.grey), 0.3 if look.beard == 1 else 0.75)
    lower = _face_lower(look, 0.995, 24)
    jaw = lower[lower[:, 1] > 0.25]
    p.poly(np.concatenate([jaw, [[-0.2, 0.3], [0.2, 0.3]]]), colour)


def _draw_eyes(p: Painter, look: Look) -> None:
    rx = 0.11 * look.eye_w
    for side in (-1, 1):
        cx = side * 0.33
        p.oval(cx, -0.15, rx, 0.05, (238, 236, 230), depth=0.6)
        p.oval(cx, -0.15, 0.045, 0.045, look.iris, depth=0.6)
        p.oval(cx, -0.15, 0.02, 0.02, (10, 10, 10), depth=0.6)
        lid = _arc(cx, -0.15, rx * 1.05, 0.055, np.pi, 2 * np.pi, 10)
        p.line(lid, (20, 15, 15) if look.eyeliner else _mix(look.skin, (0, 0, 0), 0.5),
               0.03 if look.eyeliner else 0.015, depth=0.6)
        arch = look.brow_arch
        brow = _arc(cx, -0.26 + arch, 0.15, 0.07 + arch, np.pi + 0.35, 2 * np.pi - 0.35, 10)
        p.line(brow, look.brow_colour, look.brow_thick, depth=0.6)


def _draw_nose(p: Painter, look: Look) -> None:
    shade = _mix(look.skin, (40, 20, 10), 0.3)
    p.line([[0.05, -0.08], [0.07, 0.12], [0.1, 0.2]], shade, 0.025, depth=1.0)
    p.line(_arc(0, 0.19, 0.1, 0.06, 0.2, np.pi - 0.2, 8), shade, 0.025, depth=1.0)
    for side in (-1, 1):
        p.oval(side * 0.05, 0.23, 0.032, 0.018, _mix(look.skin, (30, 10, 10), 0.55), depth=1.0)


def _draw_mouth(p: Painter, look: Look, rng: np.random.Generator) -> None:
    w = look.mouth_w
    opened = rng.uniform(0, 0.03)
    upper = [[-w, 0.5], [-w * 0.4, 0.46], [0, 0.475], [w * 0.4, 0.46], [w, 0.5], [0, 0.5 + opened]]
    lower = [[-w, 0.5], [0, 0.5 + opened], [w, 0.5], [w * 0.5, 0.56 + opened], [-w * 0.5, 0.56 + opened]]
    p.poly(upper, _mix(look.lips, (0, 0, 0), 0.12), depth=0.7)
    p.poly(lower, look.lips, depth=0.7)
    p.line([[-w, 0.5], [0, 0.5 + opened], [w, 0.5]], _mix(look.lips, (0, 0, 0), 0.55), 0.015, depth=0.7)


def _draw_top_hair(p: Painter, look: Look, rng: np.random.Generator) -> None:
    """The hair cap from the hairline over the crown, side locks for long hair, a fringe for some."""
    fw, vol = look.face_w, look.hair_volume
    if look.hair_style == "bald":
        for side in (-1, 1):
            p.poly([[side * fw * 0.9, -0.5], [side * (fw + vol), -0.45], [side * (fw + vol), 0.0],
                    [side * fw * 0.97, 0.0]], _hair_fill(look))
        return
    outer = _arc(0, -0.1, fw + vol, 0.95 + vol, np.pi - 0.05, 2 * np.pi + 0.05, 24)
    y0, recess = look.hairline, look.temple_recess
    inner = [[fw * 1.01, -0.12], [fw * 0.85, y0 + 0.12 - recess], [fw * 0.5, y0 - recess], [0, y0],
             [-fw * 0.5, y0 - recess], [-fw * 0.85, y0 + 0.12 - recess], [-fw * 1.01, -0.12]]
    p.poly(np.concatenate([outer, inner]), _hair_fill(look))
    for _ in range(16):
        a = rng.uniform(np.pi + 0.3, 2 * np.pi - 0.3)
        start = [0.75 * fw * np.cos(a), y0 + 0.02]
        end = [(fw + vol) * 0.95 * np.cos(a), -0.1 + (0.95 + vol) * 0.95 * np.sin(a)]
        p.line([start, end], _strand_colour(rng, look), 0.025)
    if look.hair_style == "long":
        for side in (-1, 1):
            lock = [[side * fw * 0.8, -0.55], [side * (fw + vol + 0.1), -0.4],
                    [side * (fw + vol + 0.05), look.hair_len], [side * (fw - 0.06), look.hair_len * 0.8],
                    [side * (fw - 0.08), 0.0]]
            p.poly(lock, _hair_fill(look))
    if look.fringe:
        xs = np.linspace(-fw * 0.85, fw * 0.85, 9)
        edge = -0.42 + 0.04 * rng.random(9)
        p.poly(np.concatenate([[[-fw * 0.9, y0 - 0.05]], np.stack([xs, edge], 1), [[fw * 0.9, y0 - 0.05]]]),
               _hair_fill(look))


def _mask_outline(look: Look, style: MaskStyle) -> np.ndarray:
    """The mask as worn (top at the nose bridge, bottom under the chin), before any pulling down."""
    if style.kind == "kf94":
        w = look.face_w * 1.02
        return np.array([[-w, 0.02], [-w * 0.5, -0.04], [0, -0.1], [w * 0.5, -0.04], [w, 0.02],
                         [w * 0.85, 0.6], [0, 1.12], [-w * 0.85, 0.6]])
    lower = _face_lower(look, 1.04, 20)
    w = lower[0, 0]
    sag = 0.02 if style.kind == "surgical" else 0.06
    top = np.stack([np.linspace(-w, w, 9), -sag * (1 - np.linspace(-1, 1, 9) ** 2)], 1)
    return np.concatenate([top, lower[1:-1]])


def _draw_mask_details(p: Painter, outline: np.ndarray, style: MaskStyle, look: Look) -> None:
    top, bottom = outline[:, 1].min(), outline[:, 1].max()
    w = np.abs(outline[:, 0]).max()
    if style.kind == "surgical":
        for k in (1, 2, 3):
            y = top + (bottom - top) * k / 4.5
            p.line([[-w * 0.85, y], [w * 0.85, y]], style.accent, 0.02, depth=0.8)
    elif style.kind == "kf94":
        mid = top + (bottom - top) * 0.45
        p.line([[-w * 0.9, mid], [0, mid - 0.03], [w * 0.9, mid]], style.accent, 0.018, depth=0.8)
    elif style.kind == "dotted":
        gx, gy = np.meshgrid(np.arange(-w, w, 0.12), np.arange(top, bottom, 0.12))
        dots = np.stack([gx.ravel() + 0.06 * (np.arange(gy.size) // gx.shape[1] % 2), gy.ravel()], 1)
        for x, y in dots[_inside(outline, dots)]:
            p.oval(x, y, 0.03, 0.03, style.accent, depth=0.8)


def _draw_mask(p: Painter, look: Look, stem: str) -> None:
    if stem == "normal":
        return
    if stem == "incorrect_mask":
        style = look.masks[0]
        drop, squash = (0.62, 0.72) if look.incorrect_on_chin else (0.32, 0.92)
    else:
        style = look.masks[MASK_STEMS.index(stem)]
        drop, squash = 0.0, 1.0
    outline = _mask_outline(look, style)
    outline = np.stack([outline[:, 0], drop + (outline[:, 1] - outline[:, 1].min()) * squash
                        + outline[:, 1].min()], 1)
    p.poly(outline, style.colour, depth=0.8)
    _draw_mask_details(p, outline, style, look)


def _draw_glasses(p: Painter, look: Look) -> None:
    if look.glasses is None:
        return
    for side in (-1, 1):
        p.line(_arc(side * 0.33, -0.15, 0.16, 0.11, n=20), look.glasses, 0.025, depth=0.7)
    p.line([[-0.17, -0.17], [0.17, -0.17]], look.glasses, 0.025, depth=0.7)


def _camera(img: Image.Image, shot: Shot, rng: np.random.Generator) -> Image.Image:
    """Blur, brightness with a lighting gradient, colour cast and sensor noise (triangular, which is
    several times cheaper to draw than Gaussian and looks the same)."""
    if shot.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(shot.blur * img.height / 128))
    a = np.asarray(img, dtype=np.float32)
    h, w = a.shape[:2]
    light = shot.gain * (1 + shot.grad_y * np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
                         + shot.grad_x * np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :])
    a *= light[..., None] * shot.cast.astype(np.float32)
    pairs = np.frombuffer(rng.bytes(2 * a.size), dtype=np.uint8).reshape(2, *a.shape)
    a += (pairs[0].astype(np.float32) - pairs[1]) * np.float32(shot.noise / TRIANGULAR_SD)
    return Image.fromarray(np.clip(a, 0, 255, out=a).astype(np.uint8))


def render(person: Person, stem: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One photo of `person` with mask state `stem`, `size` = (width, height)."""
    look, shot = person.look, person.shots[MASK_STEMS.index(stem)]
    big = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    canvas = _background(look, shot, big)
    p = Painter(canvas, shot)
    _draw_clothes(p, look)
    _draw_back_hair(p, look, rng)
    _draw_neck_and_ears(p, look)
    _draw_face(p, look)
    _draw_wrinkles(p, look)
    _draw_beard(p, look)
    _draw_nose(p, look)
    _draw_mouth(p, look, rng)
    _draw_eyes(p, look)
    _draw_top_hair(p, look, rng)
    _draw_mask(p, look, stem)
    _draw_glasses(p, look)
    return _camera(canvas.reduce(SUPERSAMPLE), shot, rng)


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _photos(seed: int, role: int, index: int, person: Person, size: tuple[int, int]):
    """(stem, JPEG bytes) for the seven shots; the drawing's own randomness (strands, mouth, noise)
    comes from a per-shot stream so it never depends on other people."""
    for k, stem in enumerate(MASK_STEMS):
        rng = np.random.default_rng([seed, role, index, SHOTS, k])
        yield stem, _jpeg(render(person, stem, size, rng), person.shots[k].quality)


# ---------------------------------------------------------------------------------------------------
# Writing the competition layout
# ---------------------------------------------------------------------------------------------------

def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _person_shots(job: tuple[int, int, int, bool, tuple[int, int]]) -> tuple[Person, list[tuple[str, bytes]]]:
    """One person and their seven JPEGs: everything drawn from the person's own streams, so people can be
    made in any order, in any process, and the bytes stay the same."""
    seed, role, index, noisy, size = job
    person = _sample_person(seed, role, index, noisy)
    return person, list(_photos(seed, role, index, person, size))


def _people(seed: int, role: int, people: int, size: tuple[int, int], noisy: set[int], workers: int):
    """(index, person, shots) in index order, drawn by `workers` processes (1: this one)."""
    jobs = [(seed, role, i, i in noisy, size) for i in range(people)]
    if workers <= 1 or people < 2 * workers:
        yield from ((i, *_person_shots(j)) for i, j in enumerate(jobs))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may hold threads (torch's, a progress bar's) that a fork would copy mid-lock
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        chunk = max(1, min(16, people // (4 * workers)))
        yield from ((i, *r) for i, r in enumerate(pool.map(_person_shots, jobs, chunksize=chunk)))


def _write_train(root: Path, seed: int, people: int, size: tuple[int, int], label_noise: float,
                 workers: int = 1) -> int:
    noisy = _noisy_people(seed, people, label_noise)
    rows = []
    for i, person, shots in _people(seed, TRAIN, people, size, noisy, workers):
        pid, gender = f"{i + 1:06d}", GENDERS[person.recorded_gender]
        folder = f"{pid}_{gender}_{person.race}_{person.recorded_age}"
        rows.append([pid, gender, person.race, person.recorded_age, folder])
        out = root / "train" / "images" / folder
        out.mkdir(parents=True)
        for stem, data in shots:
            (out / f"{stem}.jpg").write_bytes(data)
    _write_csv(root / "train" / "train.csv", ["id", "gender", "race", "age", "path"], rows)
    return people * len(MASK_STEMS)


def _eval_image_id(seed: int, index: int) -> str:
    return hashlib.sha1(f"comp-synth-eval:{seed}:{index}".encode()).hexdigest() + ".jpg"


def _write_eval(root: Path, seed: int, people: int, size: tuple[int, int], workers: int = 1) -> int:
    images = root / "eval" / "images"
    images.mkdir(parents=True)
    bins, truth = AgeBins(), []
    for _, person, shots in _people(seed, EVAL, people, size, set(), workers):
        for stem, data in shots:
            image_id = _eval_image_id(seed, len(truth))
            (images / image_id).write_bytes(data)
            truth.append((image_id, encode(STEM_TO_MASK[stem], person.gender, bins.group(person.age))))
    rng = np.random.default_rng([seed, EVAL, 2**31])
    order = rng.permutation(len(truth))
    public = set(rng.permutation(len(truth))[: len(truth) // 2].tolist())
    _write_csv(root / "eval" / "info.csv", ["ImageID", "ans"], [[truth[k][0], 0] for k in order])
    _write_csv(root / "eval_truth.csv", ["ImageID", "ans", "Usage"],
               [[*truth[k], "Public" if k in public else "Private"] for k in order])
    return len(truth)


def _check_args(people, eval_people, size, seed, label_noise, workers=1) -> tuple[int, int]:
    problems = []
    if not isinstance(workers, int) or workers < 1:
        problems.append(f"workers must be a positive integer, got {workers!r}")
    if not isinstance(people, int) or people < 1:
        problems.append(f"people must be a positive integer, got {people!r}")
    if not isinstance(eval_people, int) or eval_people < 1:
        problems.append(f"eval_people must be a positive integer, got {eval_people!r}")
    if len(tuple(size)) != 2 or any(not isinstance(v, int) or v < 16 for v in size):
        problems.append(f"size must be (width, height), both integers >= 16, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        problems.append(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= label_noise <= 1.0:
        problems.append(f"label_noise must lie in [0, 1], got {label_noise!r}")
    if problems:
        raise CompError(*problems)
    return int(size[0]), int(size[1])


def write_synth(out, people: int = 120, eval_people: int = 40, size: tuple[int, int] = (96, 128),
                seed: int = 0, label_noise: float = 0.0, force: bool = False, workers: int = 1) -> SynthSummary:
    """Write a synthetic dataset in the competition layout to `out` (see the module docstring):
    train/train.csv, train/images/<id>_<gender>_<race>_<age>/<7 shots>.jpg, eval/info.csv,
    eval/images/<sha1>.jpg and eval_truth.csv. `size` is (width, height). An existing non-empty
    `out` is refused unless `force`; a failed run leaves nothing behind. `workers` processes draw the
    people (~35 ms a photo at 384x512 on one core); the files are the same for any number."""
    size = _check_args(people, eval_people, size, seed, label_noise, workers)
    start = time.perf_counter()
    root = Path(out)
    with atomic_dir(root, force=force) as tmp:
        train_images = _write_train(tmp, seed, people, size, label_noise, workers)
        eval_images = _write_eval(tmp, seed, eval_people, size, workers)
    return SynthSummary(root, people, train_images, eval_images, time.perf_counter() - start)
