"""The procedural fundus generator: the book's embedded default dataset.

A colour fundus photograph is drawn from a seed: the circular field of view, choroidal texture,
the optic disc, the macula, a branching vessel tree, and lesions whose kind and count follow the
International Clinical Diabetic Retinopathy severity scale (grades 0-4):

=====  ============================  ========================================================
grade  name                          lesions drawn
=====  ============================  ========================================================
0      no DR                         none
1      mild NPDR                     microaneurysms only
2      moderate NPDR                 more microaneurysms + haemorrhages, some hard exudates or
                                     a few cotton-wool spots
3      severe NPDR                   many haemorrhages in all four quadrants, exudates,
                                     cotton-wool spots, venous beading
4      proliferative DR              severe findings + neovascularisation (disc or elsewhere)
=====  ============================  ========================================================

What varies between eyes whatever the grade makes grading hard in the ways real grading is:
pigmentation and choroidal tessellation, the nerve-fibre sheen, lesion look-alikes (drusen are yellow
like exudates, pigment clumps dark like microaneurysms), and the camera (exposure, colour cast,
gamma, vignetting, defocus, haze, lens dust, noise, JPEG). Haemorrhages come as dot-blot (round) or
flame (thin, along the nerve fibres). Under the ``clinic`` cameras, colour statistics no longer give
the grade away (``benchmarks/headroom.py`` measures it): lesion kind, shape, size and place do.

Everything is deterministic given ``(seed, grade, camera)``; geometry is drawn in normalised
coordinates, so the same seed gives the same eye at 64 px or 1024 px. Each sample comes with its
grade, one binary mask per lesion kind (segmentation), and a caption (text-to-image).
The known ground truth makes it a controlled benchmark; it is not a substitute for real data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "GRADE_NAMES",
    "GRADE_SHORT",
    "LESION_KINDS",
    "LOOK_ALIKES",
    "STRUCTURES",
    "MASK_KINDS",
    "MASKS_VERSION",
    "CameraModel",
    "CAMERA_PRESETS",
    "FundusSample",
    "generate_fundus",
    "lesion_counts_for_grade",
    "caption_for",
    "eye_of",
]

GRADE_NAMES: tuple[str, ...] = (
    "no diabetic retinopathy",
    "mild non-proliferative diabetic retinopathy",
    "moderate non-proliferative diabetic retinopathy",
    "severe non-proliferative diabetic retinopathy",
    "proliferative diabetic retinopathy",
)
GRADE_SHORT: tuple[str, ...] = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")

LESION_KINDS: tuple[str, ...] = (
    "microaneurysms",
    "haemorrhages",
    "hard_exudates",
    "cotton_wool_spots",
    "neovascularisation",
)
# Findings that are not diabetic retinopathy but look like it (yellow drusen, dark pigment clumps).
LOOK_ALIKES: tuple[str, ...] = ("drusen", "pigment_clumps")
# Anatomy with a mask too (segmentation targets, like DRIVE's vessels and IDRiD's optic disc).
STRUCTURES: tuple[str, ...] = ("vessels", "optic_disc")
MASK_KINDS: tuple[str, ...] = (*STRUCTURES, *LESION_KINDS)
# Bumped whenever the masks change for the same seed (2: clipped to the field of view), so that
# segmentation runs trained on the old masks are not resumed or reused (``data.fingerprint``).
MASKS_VERSION = 2
_LESION_WORDS = {
    "microaneurysms": "microaneurysms",
    "haemorrhages": "haemorrhages",
    "hard_exudates": "hard exudates",
    "cotton_wool_spots": "cotton-wool spots",
    "neovascularisation": "neovascularisation",
    "venous_beading": "venous beading",
}

# Internal render size floor: small outputs are rendered larger and downsampled, so that
# thin vessels and microaneurysms survive as anti-aliased detail instead of vanishing.
_MIN_RENDER = 256


@dataclass(frozen=True)
class CameraModel:
    """Acquisition and illumination: the knob for domain shift.

    The mean values describe a "camera"; ``variation`` scales random per-image jitter around them
    (0 = every image shot identically).

    Attributes:
        gain: overall brightness multiplier.
        colour: per-channel (R, G, B) multipliers (colour cast).
        gamma: display gamma applied at the end.
        vignette: darkening towards the rim of the field of view (0..1).
        gradient: strength of a linear illumination gradient across the field (0..1).
        blur: defocus blur, in fractions of the image width.
        noise: additive Gaussian noise std (on a 0..1 scale).
        variation: per-image jitter scale (0 = none; 1 = as different as photographs from
            different clinics: exposure, colour cast, gamma, vignetting, defocus, haze).
        jpeg: JPEG quality of the saved image (0 = not compressed).
        haze: strength of a whitish veil (media opacity, flare), 0..1.
    """

    gain: float = 1.0
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    gamma: float = 1.0
    vignette: float = 0.35
    gradient: float = 0.1
    blur: float = 0.0
    noise: float = 0.01
    variation: float = 0.3
    jpeg: int = 0
    haze: float = 0.0

    def jittered(self, rng: np.random.Generator) -> "CameraModel":
        """A per-image camera drawn around this one (uses 9 draws from ``rng``)."""
        v = self.variation
        u = rng.uniform(-1.0, 1.0, size=9)
        return replace(
            self,
            gain=self.gain * (1.0 + 0.25 * v * u[0]),
            colour=(
                self.colour[0] * (1.0 + 0.12 * v * u[1]),
                self.colour[1] * (1.0 + 0.12 * v * u[2]),
                self.colour[2] * (1.0 + 0.2 * v * u[3]),
            ),
            gamma=self.gamma * (1.0 + 0.2 * v * u[4]),
            vignette=float(np.clip(self.vignette + 0.2 * v * u[5], 0.0, 0.95)),
            gradient=float(np.clip(self.gradient + 0.15 * v * u[6], 0.0, 0.8)),
            blur=max(0.0, self.blur + 0.002 * v * max(u[7], 0.0)),
            haze=float(np.clip(self.haze + 0.15 * v * max(u[8], 0.0), 0.0, 0.8)),
            variation=0.0,
        )


CAMERA_PRESETS: dict[str, CameraModel] = {
    "default": CameraModel(),
    "fixed": CameraModel(variation=0.0, noise=0.0),
    # Two deliberately different cameras for domain-shift experiments.
    "dim_bluish": CameraModel(gain=0.75, colour=(0.85, 1.0, 1.25), gamma=1.15, vignette=0.55),
    "bright_warm": CameraModel(gain=1.2, colour=(1.1, 0.95, 0.8), gamma=0.9, vignette=0.2, blur=0.002),
    # Clinic-grade nuisance: every image exposed, tinted and focused differently, JPEG-compressed.
    # Colour statistics stop predicting the grade; only lesion shape, size and place do.
    "clinic": CameraModel(variation=1.6, noise=0.02, jpeg=70, haze=0.05),
    "clinic_dim_bluish": CameraModel(gain=0.8, colour=(0.85, 1.0, 1.25), gamma=1.15, vignette=0.5,
                                     variation=1.6, noise=0.025, jpeg=60, haze=0.08),
}


@dataclass
class FundusSample:
    """One generated fundus photograph.

    Attributes:
        image: ``uint8`` array ``[H, W, 3]``.
        grade: diabetic-retinopathy grade 0-4.
        masks: kind -> ``bool`` array ``[H, W]`` for every kind of :data:`MASK_KINDS` (the two
            structures, vessels and optic disc, and the lesion kinds, empty when absent).
        caption: a sentence describing the eye (for text-to-image).
        counts: lesion kind -> number of lesions drawn.
        findings: lesion kinds present, in :data:`LESION_KINDS` order (+ ``venous_beading``).
        seed: the seed it was drawn from.
        meta: eye side, disc and macula centres and disc radius (normalised), ``centres`` (kind ->
            list of ``(x, y)`` normalised centres, for every lesion kind and look-alike), camera parameters.
    """

    image: np.ndarray
    grade: int
    masks: dict[str, np.ndarray]
    caption: str
    counts: dict[str, int]
    findings: list[str]
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)

    def mask_stack(self) -> np.ndarray:
        """Masks as one ``bool`` array ``[K, H, W]`` in :data:`LESION_KINDS` order."""
        return np.stack([self.masks[k] for k in LESION_KINDS])


def lesion_counts_for_grade(grade: int, rng: np.random.Generator) -> dict[str, int]:
    """How many lesions of each kind to draw for a grade (the grade semantics, in one place).

    Uses exactly 5 draws from ``rng``. Raises ValueError for a grade outside 0-4.
    """
    if grade not in range(5):
        raise ValueError(f"grade={grade!r}: expected an integer 0-4 (ICDR severity scale)")
    u = rng.random(5)

    def pick(lo: int, hi: int, x: float) -> int:
        return int(lo + math.floor(x * (hi - lo + 1 - 1e-9)))

    counts = dict.fromkeys(LESION_KINDS, 0)
    if grade == 1:
        counts["microaneurysms"] = pick(1, 6, u[0])
    elif grade == 2:
        counts["microaneurysms"] = pick(4, 15, u[0])
        counts["haemorrhages"] = pick(1, 5, u[1])
        counts["hard_exudates"] = pick(0, 8, u[2])
        counts["cotton_wool_spots"] = pick(0, 2, u[3])
    elif grade >= 3:
        counts["microaneurysms"] = pick(8, 20, u[0])
        counts["haemorrhages"] = pick(20, 30, u[1])   # ICDR: > 20 in all four quadrants
        counts["hard_exudates"] = pick(2, 14, u[2])
        counts["cotton_wool_spots"] = pick(1, 4, u[3])
        if grade == 4:
            counts["neovascularisation"] = pick(1, 3, u[4])
    return counts


def _join_words(words: list[str]) -> str:
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def caption_for(grade: int, findings: list[str], eye: str | None = None) -> str:
    """The caption of a sample: grade in words plus the findings present.

    >>> caption_for(0, [])
    'A colour fundus photograph with no diabetic retinopathy.'
    """
    subject = f"A colour fundus photograph of a {eye} eye" if eye else "A colour fundus photograph"
    if grade == 0:
        return f"{subject} with no diabetic retinopathy."
    words = _join_words([_LESION_WORDS[f] for f in findings])
    return f"{subject} with {GRADE_NAMES[grade]}: {words}."


# ----------------------------------------------------------------------------- geometry


def _vessel_tree(rng: np.random.Generator, disc: tuple[float, float], toward_macula: float,
                 beading: bool) -> list[tuple[float, float, float, float, float, bool]]:
    """Line segments ``(x0, y0, x1, y1, width, is_vein)`` in normalised coordinates."""
    segments: list[tuple[float, float, float, float, float, bool]] = []

    def grow(x: float, y: float, angle: float, bend: float, width: float, steps: int,
             depth: int, vein: bool) -> None:
        step = 0.022
        phase = rng.uniform(0, 2 * math.pi)
        for i in range(steps):
            angle += bend + rng.normal(0.0, 0.12)
            nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
            w = width * (1.0 - 0.6 * i / max(steps, 1))
            if vein and beading:
                w *= 1.0 + 0.45 * math.sin(phase + 2.2 * i)
            segments.append((x, y, nx, ny, w, vein))
            if (nx - 0.5) ** 2 + (ny - 0.5) ** 2 > 0.47**2:
                return
            x, y = nx, ny
            if depth < 2 and i > 2 and rng.random() < 0.16:
                side = 1.0 if rng.random() < 0.5 else -1.0
                grow(x, y, angle + side * rng.uniform(0.45, 0.9), bend * 0.5 + side * 0.02,
                     w * 0.7, int(steps * rng.uniform(0.35, 0.6)), depth + 1, vein)

    dx = toward_macula
    for vein in (False, True):
        base_w = 0.011 if vein else 0.008
        for up in (-1.0, 1.0):
            # temporal arcade: leaves the disc vertically, sweeps around the macula
            start = math.atan2(up, 0.35 * dx) + rng.normal(0, 0.08)
            bend = 0.07 * (-up) * (1.0 if dx > 0 else -1.0)   # curves round towards the macula
            grow(disc[0] + 0.004 * dx * (1 if vein else -1), disc[1], start, bend, base_w,
                 int(rng.integers(22, 28)), 0, vein)
            # nasal branch: shorter, heads away from the macula
            nstart = math.atan2(up * 0.8, -dx) + rng.normal(0, 0.15)
            grow(disc[0], disc[1], nstart, rng.normal(0, 0.02), base_w * 0.7,
                 int(rng.integers(8, 13)), 1, vein)
    return segments


def _spot_positions(rng: np.random.Generator, n: int, disc: tuple[float, float],
                    macula: tuple[float, float], spread: float = 0.36,
                    around: tuple[float, float] | None = None) -> np.ndarray:
    """``[n, 2]`` lesion centres inside the field of view, away from the optic disc."""
    out = np.zeros((n, 2))
    centre = np.asarray(around if around is not None else macula)
    for i in range(n):
        for _ in range(20):
            if around is not None:
                p = centre + rng.normal(0.0, spread, size=2)
            else:
                r = spread * math.sqrt(rng.random())
                t = rng.uniform(0, 2 * math.pi)
                p = np.array([0.5 + r * math.cos(t), 0.5 + r * math.sin(t)])
            if (p[0] - 0.5) ** 2 + (p[1] - 0.5) ** 2 < 0.43**2 and \
                    (p[0] - disc[0]) ** 2 + (p[1] - disc[1]) ** 2 > 0.07**2:
                break
        out[i] = p
    return out


def _ellipse_polygon(cx: float, cy: float, rx: float, ry: float, theta: float,
                     scale: float, n: int = 14) -> list[tuple[float, float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x = rx * np.cos(t)
    y = ry * np.sin(t)
    c, s = math.cos(theta), math.sin(theta)
    return [((cx + c * a - s * b) * scale, (cy + s * a + c * b) * scale) for a, b in zip(x, y)]


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    """Low-frequency noise ``[size, size]`` in about [-1, 1] (one ``cells x cells`` draw)."""
    small = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32)


# ----------------------------------------------------------------------------- rendering


def _anatomy_rng(seed: int, grade: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(grade)])


def _eye(rng: np.random.Generator) -> str:
    """The eye side: the first draw of an eye's anatomy stream."""
    return "right" if rng.random() < 0.5 else "left"


def eye_of(seed: int, grade: int) -> str:
    """Which eye (``"left"``/``"right"``) :func:`generate_fundus` draws for ``(seed, grade)``,
    without rendering it (for captions of large corpora)."""
    return _eye(_anatomy_rng(seed, grade))


def generate_fundus(
    seed: int,
    grade: int,
    size: int = 256,
    camera: CameraModel | str = "default",
) -> FundusSample:
    """Draw one fundus photograph.

    Args:
        seed: any non-negative integer; the same seed and grade give the same eye.
        grade: diabetic-retinopathy grade 0-4.
        size: output side in pixels (square), 32 or more.
        camera: a :class:`CameraModel` or the name of a preset in :data:`CAMERA_PRESETS`.

    Returns:
        :class:`FundusSample` with ``image`` ``[size, size, 3]`` uint8 and masks ``[size, size]``.
    """
    if grade not in range(5):
        raise ValueError(f"grade={grade!r}: expected an integer 0-4 (ICDR severity scale)")
    if size < 32:
        raise ValueError(f"size={size}: expected at least 32 pixels")
    if isinstance(camera, str):
        if camera not in CAMERA_PRESETS:
            raise ValueError(f"camera={camera!r}: expected one of {', '.join(CAMERA_PRESETS)}")
        camera = CAMERA_PRESETS[camera]

    rng = _anatomy_rng(seed, grade)
    R = max(size, min(_MIN_RENDER, 2 * size))

    # --- anatomy (normalised coordinates; x right, y down)
    eye = _eye(rng)
    side = 1.0 if eye == "right" else -1.0  # disc on the nasal side
    disc = (0.5 + side * rng.uniform(0.22, 0.28), 0.5 + rng.normal(0.0, 0.02))
    macula = (0.5 - side * rng.uniform(0.02, 0.06), 0.5 + rng.normal(0.0, 0.015))
    disc_r = rng.uniform(0.055, 0.07)
    cam = camera.jittered(np.random.default_rng([int(seed), int(grade), 5]))   # appearance: its own stream
    counts = lesion_counts_for_grade(grade, rng)
    beading = grade >= 3
    segments = _vessel_tree(rng, disc, -side, beading)

    # --- lesion geometry
    lesions: dict[str, list[list[tuple[float, float]]]] = {k: [] for k in LESION_KINDS}
    centres: dict[str, list[tuple[float, float]]] = {k: [] for k in (*LESION_KINDS, *LOOK_ALIKES)}
    for p in _spot_positions(rng, counts["microaneurysms"], disc, macula, spread=0.3):
        r = rng.uniform(0.004, 0.0065)
        lesions["microaneurysms"].append(_ellipse_polygon(p[0], p[1], r, r, 0.0, 1.0, 10))
        centres["microaneurysms"].append((float(p[0]), float(p[1])))
    # severe grades: haemorrhages spread over all four quadrants
    for i, p in enumerate(_spot_positions(rng, counts["haemorrhages"], disc, macula, spread=0.42)):
        if grade >= 3:
            quad = i % 4
            p = np.array([0.5 + (1 if quad in (0, 3) else -1) * abs(p[0] - 0.5),
                          0.5 + (1 if quad < 2 else -1) * abs(p[1] - 0.5)])
        if rng.random() < 0.4:   # flame: thin, along the nerve fibres that radiate from the disc
            rx, ry, theta = rng.uniform(0.01, 0.018), rng.uniform(0.0025, 0.004), \
                math.atan2(p[1] - disc[1], p[0] - disc[0])
        else:                    # dot-blot: round
            rx = rng.uniform(0.005, 0.01)
            ry, theta = rx * rng.uniform(0.75, 1.0), rng.uniform(0, math.pi)
        lesions["haemorrhages"].append(_ellipse_polygon(p[0], p[1], rx, ry, theta, 1.0))
        centres["haemorrhages"].append((float(p[0]), float(p[1])))
    ring_centre = (macula[0] + rng.normal(0, 0.05), macula[1] + rng.normal(0, 0.05))
    for p in _spot_positions(rng, counts["hard_exudates"], disc, macula, spread=0.07,
                             around=ring_centre):
        r = rng.uniform(0.004, 0.011)
        lesions["hard_exudates"].append(
            _ellipse_polygon(p[0], p[1], r, r * rng.uniform(0.6, 1.0), rng.uniform(0, math.pi), 1.0, 10))
        centres["hard_exudates"].append((float(p[0]), float(p[1])))
    for p in _spot_positions(rng, counts["cotton_wool_spots"], disc, macula, spread=0.3):
        rx, ry = rng.uniform(0.018, 0.03), rng.uniform(0.012, 0.02)
        lesions["cotton_wool_spots"].append(
            _ellipse_polygon(p[0], p[1], rx, ry, rng.uniform(0, math.pi), 1.0))
        centres["cotton_wool_spots"].append((float(p[0]), float(p[1])))
    nv_lines: list[list[tuple[float, float, float, float]]] = []
    for j in range(counts["neovascularisation"]):
        if j == 0 and rng.random() < 0.6:  # on the disc (NVD)
            c = np.array(disc) + rng.normal(0, 0.02, size=2)
        else:  # elsewhere (NVE), along an arcade
            seg = segments[int(rng.integers(0, len(segments)))]
            c = np.array([seg[0], seg[1]])
        centres["neovascularisation"].append((float(c[0]), float(c[1])))
        patch: list[tuple[float, float, float, float]] = []
        for _ in range(int(rng.integers(10, 16))):
            x, y = c + rng.normal(0, 0.012, size=2)
            a = rng.uniform(0, 2 * math.pi)
            for _ in range(4):
                a += rng.normal(0, 0.9)
                nx, ny = x + 0.01 * math.cos(a), y + 0.01 * math.sin(a)
                patch.append((x, y, nx, ny))
                x, y = nx, ny
        nv_lines.append(patch)

    # --- what varies between eyes whatever the grade: pigmentation, choroidal tessellation, the
    # nerve-fibre sheen, and lesion look-alikes (drusen are yellow like exudates, pigment clumps
    # dark like microaneurysms). With them, colour statistics stop giving the grade away.
    pigment = rng.uniform(-1.0, 1.0, size=3)
    tessellation = float(rng.random() ** 2)
    sheen = float(rng.random() ** 2)
    n_drusen = int(rng.integers(0, 26)) if rng.random() < 0.5 else 0
    n_pigment = int(rng.integers(0, 11)) if rng.random() < 0.5 else 0
    drusen_at = _spot_positions(rng, n_drusen, disc, macula, spread=0.09, around=macula)
    drusen = [_ellipse_polygon(p[0], p[1], r, r, 0.0, 1.0, 10)
              for p, r in zip(drusen_at, rng.uniform(0.003, 0.008, size=n_drusen))]
    clumps_at = _spot_positions(rng, n_pigment, disc, macula, spread=0.4)
    clumps = [_ellipse_polygon(p[0], p[1], r, r * 0.8, 0.0, 1.0, 8)
              for p, r in zip(clumps_at, rng.uniform(0.003, 0.007, size=n_pigment))]
    centres["drusen"] = [(float(p[0]), float(p[1])) for p in drusen_at]
    centres["pigment_clumps"] = [(float(p[0]), float(p[1])) for p in clumps_at]
    n_dust = int(rng.integers(0, 4))
    dust = [(*rng.uniform(0.2, 0.8, size=2), rng.uniform(0.015, 0.035)) for _ in range(n_dust)]

    # --- raster layers (L mode, 0..255) at render size R
    def layer() -> tuple[Image.Image, ImageDraw.ImageDraw]:
        im = Image.new("L", (R, R), 0)
        return im, ImageDraw.Draw(im)

    art_im, art_d = layer()
    vein_im, vein_d = layer()
    for x0, y0, x1, y1, w, vein in segments:
        d = vein_d if vein else art_d
        d.line([(x0 * R, y0 * R), (x1 * R, y1 * R)], fill=255, width=max(1, int(round(w * R))))
        rr = w * R / 2
        d.ellipse([x1 * R - rr, y1 * R - rr, x1 * R + rr, y1 * R + rr], fill=255)
    lesion_layers: dict[str, Image.Image] = {}
    for kind in LESION_KINDS:
        im, d = layer()
        if kind == "neovascularisation":
            for patch in nv_lines:
                for x0, y0, x1, y1 in patch:
                    d.line([(x0 * R, y0 * R), (x1 * R, y1 * R)], fill=255, width=max(1, int(0.0025 * R)))
        else:
            for poly in lesions[kind]:
                d.polygon([(x * R, y * R) for x, y in poly], fill=255)
        lesion_layers[kind] = im
    look_alikes: dict[str, Image.Image] = {}
    for name, polys in (("drusen", drusen), ("pigment", clumps)):
        im, d = layer()
        for poly in polys:
            d.polygon([(x * R, y * R) for x, y in poly], fill=255)
        look_alikes[name] = im
    dust_im, dust_d = layer()
    for x, y, r in dust:
        dust_d.ellipse([(x - r) * R, (y - r) * R, (x + r) * R, (y + r) * R], fill=255)

    # --- colour composition (float32 [R, R, 3])
    yy, xx = np.mgrid[0:R, 0:R].astype(np.float32) / R
    r2 = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.46**2
    fov = np.clip((1.0 - r2) * R / 6.0, 0.0, 1.0)  # soft-edged field of view
    texture = _smooth_noise(rng, 10, R) * 0.05 + _smooth_noise(rng, 40, R) * 0.025
    base = np.array([0.80, 0.36, 0.16], dtype=np.float32) * (1.0 + np.array([0.12, 0.3, 0.45]) * pigment)
    img = base.astype(np.float32)[None, None, :] * (1.0 + texture[..., None])
    choroid = np.abs(_smooth_noise(rng, 28, R))                      # interlacing choroidal vessels
    img *= (1.0 - 0.2 * tessellation * np.clip(1.0 - 1.5 * choroid, 0.0, 1.0))[..., None]
    macula_g = np.exp(-((xx - macula[0]) ** 2 + (yy - macula[1]) ** 2) / (2 * 0.075**2))
    img *= (1.0 - 0.38 * macula_g)[..., None]
    fovea_g = np.exp(-((xx - macula[0]) ** 2 + (yy - macula[1]) ** 2) / (2 * 0.008**2))
    img += 0.08 * fovea_g[..., None]
    disc_d = np.sqrt((xx - disc[0]) ** 2 + ((yy - disc[1]) / 1.1) ** 2)
    disc_m = np.clip((disc_r - disc_d) / (0.15 * disc_r) + 0.5, 0.0, 1.0)
    cup_m = np.clip((0.45 * disc_r - disc_d) / (0.2 * disc_r) + 0.5, 0.0, 1.0)
    disc_col = np.array([0.98, 0.80, 0.52], dtype=np.float32)
    img = img * (1 - 0.85 * disc_m[..., None]) + 0.85 * disc_m[..., None] * disc_col
    img = img * (1 - 0.5 * cup_m[..., None]) + 0.5 * cup_m[..., None] * np.array([1.0, 0.95, 0.85])

    def soft(im: Image.Image, radius: float) -> np.ndarray:
        if radius > 0.3:
            im = im.filter(ImageFilter.GaussianBlur(float(radius)))
        return np.asarray(im, dtype=np.float32) / 255.0

    def paint(alpha: np.ndarray, colour: tuple[float, float, float], strength: float) -> None:
        nonlocal img
        a = (strength * alpha)[..., None]
        img = img * (1 - a) + a * np.asarray(colour, dtype=np.float32)

    blur_r = 0.0015 * R
    paint(soft(vein_im, 0.012 * R), (0.95, 0.9, 0.85), 0.18 * sheen)    # nerve-fibre reflex
    paint(soft(art_im, blur_r), (0.62, 0.13, 0.08), 0.55)
    paint(soft(vein_im, blur_r), (0.42, 0.05, 0.06), 0.7)
    paint(soft(look_alikes["drusen"], 0.003 * R), (0.95, 0.85, 0.45), 0.6)
    paint(soft(look_alikes["pigment"], blur_r), (0.22, 0.1, 0.06), 0.8)
    paint(soft(lesion_layers["neovascularisation"], blur_r * 0.7), (0.5, 0.06, 0.06), 0.8)
    paint(soft(lesion_layers["cotton_wool_spots"], 0.006 * R), (0.95, 0.92, 0.85), 0.75)
    paint(soft(lesion_layers["hard_exudates"], blur_r), (0.98, 0.88, 0.35), 0.9)
    paint(soft(lesion_layers["haemorrhages"], blur_r), (0.38, 0.03, 0.03), 0.85)
    paint(soft(lesion_layers["microaneurysms"], blur_r * 0.6), (0.45, 0.03, 0.04), 0.85)

    # --- camera: illumination, colour, vignette, defocus, gamma, noise
    g_angle = rng.uniform(0, 2 * math.pi)
    grad = 1.0 + cam.gradient * ((xx - 0.5) * math.cos(g_angle) + (yy - 0.5) * math.sin(g_angle)) * 2
    illum = cam.gain * grad * (1.0 - cam.vignette * np.clip(r2, 0, 1) ** 1.5)
    img = img * illum[..., None] * np.asarray(cam.colour, dtype=np.float32)
    img = img * (1.0 - 0.35 * soft(dust_im, 0.01 * R))[..., None]          # dust on the lens
    img = img * (1.0 - cam.haze) + cam.haze * np.array([0.9, 0.85, 0.8], dtype=np.float32)
    img = np.clip(img, 0.0, 1.0) * fov[..., None]
    out = Image.fromarray((np.clip(img, 0, 1) ** (1.0 / cam.gamma) * 255 + 0.5).astype(np.uint8), "RGB")
    if cam.blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(float(cam.blur * R)))
    if R != size:
        out = out.resize((size, size), Image.LANCZOS)
    arr = np.asarray(out, dtype=np.float32) / 255.0
    if cam.noise > 0:
        noise_rng = np.random.default_rng([int(seed), int(grade), 7])
        arr = arr + noise_rng.normal(0.0, cam.noise, size=arr.shape).astype(np.float32)
        fov_s = fov if R == size else np.asarray(
            Image.fromarray(fov.astype(np.float32), "F").resize((size, size), Image.BILINEAR))
        arr *= (fov_s > 0.01)[..., None]
    image = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    if cam.jpeg:
        import io

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(cam.jpeg))
        image = np.asarray(Image.open(buf).convert("RGB"))

    # --- masks at output size: a pixel belongs to a kind when >= 25% of it is covered inside the
    # field of view (vessels are drawn past the rim, where the image is black: no label there).
    # Drawn after the image, from the same geometry: the masks change no random draw and no pixel.
    inside = fov >= 0.5                                                        # [R, R]
    vessels = np.maximum(np.asarray(art_im), np.asarray(vein_im))
    masks: dict[str, np.ndarray] = {}
    for kind, layer in (("vessels", vessels), ("optic_disc", (disc_m >= 0.5) * 255),
                        *((k, np.asarray(im)) for k, im in lesion_layers.items())):
        im = Image.fromarray((np.asarray(layer) * inside).astype(np.uint8))
        if R != size:
            im = im.resize((size, size), Image.BOX)
        masks[kind] = np.asarray(im) >= 64

    findings = [k for k in LESION_KINDS if counts[k] > 0]
    if beading:
        findings.append("venous_beading")
    return FundusSample(
        image=image,
        grade=int(grade),
        masks=masks,
        caption=caption_for(grade, findings, eye),
        counts=counts,
        findings=findings,
        seed=int(seed),
        meta={"eye": eye, "disc": disc, "macula": macula, "disc_radius": disc_r, "centres": centres,
              "camera": {"gain": cam.gain, "colour": cam.colour, "gamma": cam.gamma,
                         "vignette": cam.vignette, "blur": cam.blur}},
    )
