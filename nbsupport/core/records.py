"""Run records: one JSON per training or evaluation run.

A record says what ran (chapter, method, dataset), at which scale (profile), with which weights
(pretrained or random), what it cost (wall time, peak memory, device) and what it measured
(metrics). Tables and plots in the book are made from records, never typed in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import torch

from nbsupport.core.env import describe_device, library_versions, peak_memory_bytes
from nbsupport.core.paths import records_dir, repo_root

__all__ = ["RunRecord", "RunTimer", "write_record", "read_record", "load_records", "git_commit",
           "write_benchmark", "benchmark_results"]

REQUIRED = ("chapter", "profile", "dataset", "weights", "metrics", "device", "versions")
SCHEMA_VERSION = 1


def git_commit(root: Path | None = None) -> str | None:
    """The current git commit (with ``-dirty`` when modified) of the checkout that holds the running
    ``nbsupport`` (the code that decides the numbers, even when started from another folder), else
    of :func:`repo_root`; None outside git."""
    package_checkout = Path(__file__).resolve().parents[2]
    root = root or (package_checkout if (package_checkout / "_toc.yml").is_file() else repo_root())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class RunRecord:
    """What one run did and measured.

    Attributes:
        chapter: e.g. ``"00_setup_and_data"``.
        profile: ``smoke`` / ``cpu`` / ``gpu`` / ``full``.
        dataset: manifest name.
        weights: ``"random"``, ``"none"`` (the chapter used no model) or ``"pretrained:<hub id>@<revision>"``.
        method: adaptation method or ``None``.
        params: the run's settings (hyper-parameters, counts).
        metrics: what was measured (floats, ints, or nested dicts/lists of them).
        wall_time_s: seconds from start to write.
        peak_memory_bytes: peak GPU memory (CUDA) or peak RSS (CPU).
        device: :func:`nbsupport.core.env.describe_device` output.
        versions: library versions.
        git_commit: commit of the book's repository.
        created: UTC ISO timestamp.
        name: file stem; defaults to ``chapter[-method][-dataset]``.
    """

    chapter: str
    profile: str
    dataset: str
    weights: str
    metrics: dict[str, Any]
    method: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    peak_memory_bytes: int | None = None
    device: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    created: str = ""
    name: str = ""
    schema_version: int = SCHEMA_VERSION

    def default_name(self) -> str:
        parts = [self.chapter, self.method or "", self.dataset]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(p for p in parts if p))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunTimer:
    """Measures wall time and peak memory of a run.

    >>> timer = RunTimer("cpu"); ...; timer.elapsed()
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def peak_memory(self) -> int | None:
        return peak_memory_bytes(self.device)


def _jsonable(value: Any) -> Any:
    """Convert tensors / numpy scalars / paths to plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def write_record(
    chapter: str,
    profile: str,
    dataset: str,
    weights: str,
    metrics: dict[str, Any],
    *,
    method: str | None = None,
    params: dict[str, Any] | None = None,
    timer: RunTimer | None = None,
    device: torch.device | str | None = None,
    name: str | None = None,
    directory: Path | str | None = None,
) -> Path:
    """Write a run record as JSON and return its path.

    The directory is ``directory`` or :func:`nbsupport.core.paths.records_dir`
    (``$NBSUPPORT_RECORDS``, default ``<repo>/runs``). Under a launcher (``accelerate launch``,
    ``torchrun``) only the main process writes (the others return the same path), and the record's
    params say how many processes ran.
    """
    from nbsupport.core.distributed import is_main_process, launched

    if weights not in ("random", "none") and not weights.startswith(("pretrained", "local:", "finetuned")):
        raise ValueError(f"weights={weights!r}: expected 'random', 'none' (no model used), 'pretrained:<id>@<rev>', "
                         "'local:<path>' or 'finetuned:<what>'")
    dev = torch.device(device) if device is not None else (timer.device if timer else torch.device("cpu"))
    rec = RunRecord(
        chapter=chapter,
        profile=profile,
        dataset=dataset,
        weights=weights,
        metrics=_jsonable(metrics),
        method=method,
        params=_jsonable({**(params or {}), **({"processes": int(os.environ.get("WORLD_SIZE", "1"))}
                                                  if launched() else {})}),
        wall_time_s=timer.elapsed() if timer else None,
        peak_memory_bytes=timer.peak_memory() if timer else None,
        device=describe_device(dev),
        versions=library_versions(),
        git_commit=git_commit(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    rec.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) if name else rec.default_name()
    out_dir = Path(directory) if directory is not None else records_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{rec.name}.json"
    if not is_main_process():
        return path
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec.to_dict(), indent=2, sort_keys=False), encoding="utf-8")
    tmp.replace(path)
    return path


def read_record(path: Path | str) -> RunRecord:
    """Read a run record, checking that the required fields are present.

    Raises:
        ValueError: naming the file and the missing field.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ValueError(f"{path}: run record lacks field(s) {', '.join(missing)}")
    known = set(RunRecord.__dataclass_fields__)
    return RunRecord(**{k: v for k, v in data.items() if k in known})


def load_records(directory: Path | str | None = None, pattern: str = "*.json") -> list[RunRecord]:
    """All run records in a directory, sorted by name."""
    directory = Path(directory) if directory is not None else records_dir()
    paths: Iterable[Path] = sorted(directory.glob(pattern))
    return [read_record(p) for p in paths]


def write_benchmark(directory: Path | str, benchmark: str, device: str, suffix: str, result: dict[str, Any]) -> Path:
    """Write a benchmark result as ``<directory>/<benchmark>-<device slug><suffix>.json`` and print
    where; the device is part of the name so results from different machines sit side by side."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    path = directory / f"{benchmark}-{slug}{suffix}.json"
    path.write_text(json.dumps(_jsonable(result), indent=2), encoding="utf-8")
    print(f"wrote {path}")
    return path


def benchmark_results(pattern: str) -> list[dict[str, Any]]:
    """The committed benchmark results ``benchmarks/results/<pattern>.json`` (glob), sorted by file
    name; each dict gains ``"file"`` (its name) so a page can say where a number comes from."""
    out = []
    for path in sorted((repo_root() / "benchmarks" / "results").glob(f"{pattern}.json")):
        out.append({**json.loads(path.read_text(encoding="utf-8")), "file": path.name})
    return out
