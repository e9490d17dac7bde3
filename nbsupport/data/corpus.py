"""The pretraining corpus of the pocket foundation ViT: many procedural eyes of the *source* domain.

RETFound was pretrained on 1.6M retinal photographs before anyone adapted it to grading; the
book's pocket ViT is pretrained on this corpus before chapters 01-04 adapt it. What it holds:

- images from the **source cameras** (:data:`SOURCE_CAMERAS`), never from the target camera the
  chapters grade on (:data:`TARGET_CAMERA`): the adaptation chapters face a real domain gap;
- seeds from a range no chapter dataset uses (:data:`CORPUS_SEED0` onwards);
- **no grade labels**. Each eye comes with a *parsing* target instead: for every patch of a
  ``grid x grid`` layout, which findings lie in it (:data:`PARSE_KINDS`: the five lesion kinds,
  two look-alikes, the optic disc, the fovea). This is the pocket version of pretraining on a
  lesion-segmentation source dataset (IDRiD, FGADR): it teaches *where what is*, not the grade.
  Grades are drawn uniformly only so that lesions are common; they are not stored.

Shards are written once to the cache as ``.npz`` (plain arrays, no pickle) and reused.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.checkpoints import run_key
from ..core.paths import cache_dir
from . import fundus

__all__ = ["PARSE_KINDS", "SOURCE_CAMERAS", "TARGET_CAMERA", "CORPUS_SEED0", "CorpusSpec",
           "parse_targets", "corpus_image", "build_corpus", "load_corpus", "corpus_labels"]

PARSE_KINDS: tuple[str, ...] = (*fundus.LESION_KINDS, *fundus.LOOK_ALIKES, "optic_disc", "fovea")
SOURCE_CAMERAS: tuple[str, ...] = ("default", "bright_warm", "clinic")
TARGET_CAMERA = "clinic_dim_bluish"
CORPUS_SEED0 = 10_000_000_000   # chapter datasets use seeds below 10**9
SHARD = 2000


@dataclass(frozen=True)
class CorpusSpec:
    """What defines a corpus (its cache key).

    Attributes:
        n: number of images.
        image_size: side in pixels.
        grid: parsing targets per side (``image_size / patch_size`` of the ViT).
        cameras: camera presets, used in turn.
    """

    n: int = 40_000
    image_size: int = 64
    grid: int = 8
    cameras: tuple[str, ...] = SOURCE_CAMERAS

    def __post_init__(self) -> None:
        if TARGET_CAMERA in self.cameras:
            raise ValueError(f"cameras={self.cameras}: the target camera {TARGET_CAMERA!r} must stay out "
                             "of the pretraining corpus (the chapters adapt to it)")
        unknown = [c for c in self.cameras if c not in fundus.CAMERA_PRESETS]
        if unknown:
            raise ValueError(f"cameras: unknown presets {unknown}; expected some of {list(fundus.CAMERA_PRESETS)}")

    @property
    def key(self) -> str:
        return run_key("pocket-corpus-v1", self.n, self.image_size, self.grid, list(self.cameras))


def parse_targets(sample: fundus.FundusSample, grid: int) -> np.ndarray:
    """Which findings lie in each patch: ``uint8`` ``[len(PARSE_KINDS), grid, grid]`` (row = y).

    A lesion or look-alike marks the patch holding its centre; the optic disc marks every patch
    whose centre lies inside the disc (and the one holding the disc centre); the fovea marks the
    patch holding the macula centre.
    """
    out = np.zeros((len(PARSE_KINDS), grid, grid), dtype=np.uint8)

    def cell(x: float, y: float) -> tuple[int, int]:
        return min(grid - 1, max(0, int(y * grid))), min(grid - 1, max(0, int(x * grid)))

    centres = sample.meta["centres"]
    for k, kind in enumerate(PARSE_KINDS[:-2]):
        for x, y in centres[kind]:
            out[(k, *cell(x, y))] = 1
    (dx, dy), r = sample.meta["disc"], sample.meta["disc_radius"]
    c = (np.arange(grid) + 0.5) / grid
    inside = (c[None, :] - dx) ** 2 + ((c[:, None] - dy) / 1.1) ** 2 < r**2
    out[-2] = inside
    out[(-2, *cell(dx, dy))] = 1
    out[(-1, *cell(*sample.meta["macula"]))] = 1
    return out


def _shard_grades(spec: CorpusSpec, index: int) -> np.ndarray:
    start, stop = index * SHARD, min(spec.n, (index + 1) * SHARD)
    return np.random.default_rng([CORPUS_SEED0, index]).integers(0, 5, size=stop - start)


def corpus_labels(spec: CorpusSpec) -> tuple[np.ndarray, list[str], list[str]]:
    """Grade ``int [n]``, eye side and camera of every corpus image, without rendering any.

    The ViT's pretraining never sees these; the pocket diffusion model's captions are made from
    them (:mod:`nbsupport.sd.pretrain`).
    """
    grades = np.concatenate([_shard_grades(spec, i) for i in range(math.ceil(spec.n / SHARD))])
    eyes = [fundus.eye_of(CORPUS_SEED0 + i, int(g)) for i, g in enumerate(grades)]
    cameras = [spec.cameras[i % len(spec.cameras)] for i in range(spec.n)]
    return grades, eyes, cameras


def corpus_image(spec: CorpusSpec, index: int, grade: int, camera: str | None = None) -> fundus.FundusSample:
    """Corpus image ``index`` (its grade from :func:`corpus_labels`), rendered alone; with ``camera``,
    the same eye through another camera (e.g. the target camera, which the corpus never holds)."""
    camera = camera or spec.cameras[index % len(spec.cameras)]
    return fundus.generate_fundus(CORPUS_SEED0 + index, int(grade), spec.image_size, camera)


def _shard(spec: CorpusSpec, index: int, path: Path) -> Path:
    start, stop = index * SHARD, min(spec.n, (index + 1) * SHARD)
    grades = _shard_grades(spec, index)
    images = np.zeros((stop - start, spec.image_size, spec.image_size, 3), dtype=np.uint8)
    targets = np.zeros((stop - start, len(PARSE_KINDS), spec.grid, spec.grid), dtype=np.uint8)
    for j, i in enumerate(range(start, stop)):
        s = corpus_image(spec, i, grades[j])
        images[j], targets[j] = s.image, parse_targets(s, spec.grid)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, images=images, targets=targets)
    tmp.replace(path)
    return path


def build_corpus(spec: CorpusSpec, root: Path | None = None, workers: int = 2, progress: bool = True) -> Path:
    """Generate the corpus shards that are missing (resumable); return its directory."""
    root = Path(root) if root is not None else cache_dir() / "pocket-corpus" / spec.key
    root.mkdir(parents=True, exist_ok=True)
    todo = [(i, root / f"shard-{i:04d}.npz") for i in range(math.ceil(spec.n / SHARD))]
    todo = [(i, p) for i, p in todo if not p.is_file()]
    if todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"corpus {spec.n} images", unit="shard", disable=not progress)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(_shard, [spec] * len(todo), [i for i, _ in todo], [p for _, p in todo]):
                    bar.update()
        else:
            for i, p in todo:
                _shard(spec, i, p)
                bar.update()
        bar.close()
    return root


def load_corpus(spec: CorpusSpec, root: Path | None = None, workers: int = 2,
                progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [n, H, W, 3]`` and parsing targets ``uint8 [n, len(PARSE_KINDS), grid, grid]``."""
    root = build_corpus(spec, root, workers, progress)
    images, targets = [], []
    for i in range(math.ceil(spec.n / SHARD)):
        with np.load(root / f"shard-{i:04d}.npz", allow_pickle=False) as z:
            images.append(z["images"])
            targets.append(z["targets"])
    return np.concatenate(images), np.concatenate(targets)
