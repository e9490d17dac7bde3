"""The chapter object: one line of set-up at the top of a chapter, one line of record at its end.

>>> ch = book.start("03_benchmark", profile="smoke", seed=0)     # device, seeds, timer, banner
>>> ch.profile.image_size, ch.device, ch.dataset
>>> ch.finish(weights=bb.weights, metrics={...}, params={...})  # writes the run record
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from nbsupport.core import records
from nbsupport.core.env import describe_device, library_versions, pick_device, seed_everything
from nbsupport.core.paths import cache_dir
from nbsupport.core.profiles import Profile, get_profile
from nbsupport.data.manifests import dataset_name

__all__ = ["Chapter", "start", "provenance_line"]

Task = Literal["classification", "text-to-image", "generated-images", "none"]


def provenance_line(profile: Profile, device: torch.device, task: str = "classification",
                    dataset: str | None = None) -> str:
    """One line for the page: profile, data (the manifest's name, or a manifest file's name),
    device, the weights the profile uses, and the versions that decide the numbers."""
    v = library_versions()
    libs = ", ".join(f"{k} {v[k]}" for k in ("torch", "timm", "peft", "diffusers", "nbsupport") if v.get(k))
    commit = (records.git_commit() or "")[:10]
    if task == "none":
        weights = "none (this page trains and runs no model)"
    elif profile.random_weights:
        weights = "tiny, random"
    elif task in ("text-to-image", "generated-images"):
        weights = {"pocket": "pocket-fundus-sd (the book's pocket Stable Diffusion)",
                   "sd15": "Stable Diffusion v1.5"}.get(profile.sd_model, profile.sd_model)
        if task == "generated-images":          # the images come from chapter 6; ViTs judge or learn from them
            weights = f"{weights.split(' (')[0]} (its images), {profile.vit} (the ViTs that read them)"
    else:
        weights = profile.vit
    data = f" | data {dataset_name(dataset)}" if dataset and task != "none" else ""
    return (f"profile {profile.name}{data} | device {describe_device(device)['name']} | weights {weights} | {libs}"
            + (f" | commit {commit}" if commit else ""))


@dataclass
class Chapter:
    """What a running chapter knows: its name, profile settings, device, seed, dataset and timer.

    Made by :func:`start`; :meth:`finish` writes the chapter's run record.

    Attributes:
        name: the chapter's file stem, e.g. ``"03_benchmark"``.
        profile: the :class:`~nbsupport.core.profiles.Profile` (``ch.profile.image_size``, ...).
        device: where tensors go.
        seed: the chapter's seed (everything was seeded with it at start).
        seeds: training seeds of method comparisons (the parameter, else the profile's).
        dataset: the manifest name the chapter uses (the parameter, else the profile's default).
        timer: wall time and peak memory since :func:`start`.
        provenance: one line: profile, device, library versions, commit.
        record_path: the run record :meth:`finish` wrote (``None`` before).
    """

    name: str
    profile: Profile
    device: torch.device
    seed: int
    dataset: str
    seeds: tuple[int, ...]
    timer: records.RunTimer = field(repr=False)
    provenance: str = ""
    record_path: Path | None = None

    def generated_dir(self, split: str, method: str | None = None) -> Path:
        """Where chapter 6 writes generated images of ``split`` (``eval``/``train``) for this
        profile and dataset, and chapters 7-8 read them: ``<cache>/generated/<profile>/<dataset>/<split>[/<method>]``."""
        root = cache_dir() / "generated" / self.profile.name / self.dataset_name / split
        return root / method if method else root

    @property
    def dataset_name(self) -> str:
        """The dataset's manifest name, for file and folder names: ``dataset`` itself, or the
        ``name`` field of a manifest given as a file path (``-p dataset path/to/my.yaml``)."""
        return dataset_name(self.dataset)

    def finish(self, weights: str, metrics: dict[str, Any], params: dict[str, Any] | None = None,
               dataset: str | None = None) -> None:
        """Write the chapter's run record (profile, device, versions, commit, wall time, peak memory
        come from here) and print its file name; its path is kept in ``ch.record_path``.

        Returns ``None`` so that a chapter's last cell shows the file name, not a path of the machine."""
        params = {"seed": self.seed, "seeds": list(self.seeds), **(params or {})}
        path = records.write_record(chapter=self.name, profile=self.profile.name, dataset=dataset or self.dataset_name,
                                    weights=weights, metrics=metrics, params=params, timer=self.timer,
                                    device=self.device)
        self.record_path = path
        print(f"run record: {path.name}")


def start(name: str, profile: str | Profile, seed: int = 0, dataset: str | None = None,
          task: Task = "classification", device: str | torch.device | None = None,
          show: bool = True, seeds: Sequence[int] | None = None) -> Chapter:
    """Set a chapter up: resolve the profile, pick the device, seed everything, start the timer,
    and display one provenance line with the profile banner.

    Args:
        name: the chapter's file stem (the run record is named after it).
        profile: ``smoke`` / ``cpu`` / ``gpu`` / ``full`` (or a Profile).
        seed: seeds Python, NumPy and torch.
        dataset: manifest name; ``None`` takes the profile's default for ``task``.
        task: which default dataset applies (``text-to-image`` for the Stable Diffusion chapters,
            ``generated-images`` for those that read chapter 6's images with ViTs);
            ``none`` for a page that uses no model (its provenance line says so).
        device: overrides the automatic choice (CUDA, then MPS, then CPU; ``$NBSUPPORT_DEVICE``).
        seeds: training seeds where methods are compared; ``None`` takes the profile's.
        show: display the provenance line and the profile banner.
    """
    prof = get_profile(profile)
    dev = pick_device(str(device) if device is not None else None)
    seed_everything(seed)
    default = {"text-to-image": prof.sd_dataset, "generated-images": prof.sd_dataset,
               "segmentation": prof.seg_dataset}.get(task, prof.default_dataset)
    own = dataset is not None and dataset != default and task != "none"     # not the prose's data
    dataset = dataset or default
    ch = Chapter(name=name, profile=prof, device=dev, seed=seed, dataset=dataset,
                 seeds=tuple(int(s) for s in (seeds if seeds is not None else prof.seeds)),
                 timer=records.RunTimer(dev), provenance=provenance_line(prof, dev, task, dataset))
    if show:
        from nbsupport.book.viz import profile_banner

        profile_banner(prof.name, prof.random_weights, ch.provenance,
                       own_data=(dataset_name(dataset), default) if own else None)
    return ch
