"""Device, seeding and environment description. Every function is an explicit call."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "pick_device",
    "seed_everything",
    "library_versions",
    "describe_device",
    "environment_summary",
    "reset_peak_memory",
    "peak_memory_bytes",
]

TRACKED_LIBRARIES = (
    "torch",
    "torchvision",
    "timm",
    "peft",
    "diffusers",
    "transformers",
    "accelerate",
    "torch-fidelity",
    "vendi-score",
    "scikit-learn",
    "numpy",
    "papermill",
    "nbsupport",
)


T4_USABLE_GIB = 14.75      # what a 16 GB Colab T4 leaves to a process


def emulating_t4() -> bool:
    """True when ``NBSUPPORT_EMULATE_T4=1``: a bigger GPU behaves as a Colab T4 would (fp16
    autocast with a GradScaler, never bf16; the process capped at :data:`T4_USABLE_GIB`)."""
    return os.environ.get("NBSUPPORT_EMULATE_T4", "") not in ("", "0")


def bf16_available() -> bool:
    """bf16 autocast on this GPU (False on a T4, and when emulating one)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported() and not emulating_t4()


def pick_device(preferred: str | None = None) -> torch.device:
    """The device to run on: ``preferred`` if given, else CUDA, then Apple MPS, then CPU.

    The environment variable ``NBSUPPORT_DEVICE`` overrides the automatic choice. With
    ``NBSUPPORT_EMULATE_T4=1`` a CUDA device's memory is capped at a T4's usable 14.75 GiB
    (``torch.cuda.set_per_process_memory_fraction``).
    """
    choice = preferred or os.environ.get("NBSUPPORT_DEVICE")
    if choice:
        return torch.device(choice)
    if torch.cuda.is_available():
        if emulating_t4():           # this process's GPU (LOCAL_RANK under a launcher)
            index = int(os.environ.get("LOCAL_RANK", "0"))
            total = torch.cuda.get_device_properties(index).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, T4_USABLE_GIB * 2**30 / total), index)
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a torch Generator seeded alike.

    Args:
        seed: the seed.
        deterministic: also ask torch for deterministic kernels (slower on GPU).
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def library_versions(names: tuple[str, ...] = TRACKED_LIBRARIES) -> dict[str, str | None]:
    """Installed versions of the libraries the book depends on (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe_device(device: torch.device | str | None = None) -> dict[str, Any]:
    """A description of the compute device for run records and pages."""
    device = torch.device(device) if device is not None else pick_device()
    info: dict[str, Any] = {"type": device.type, "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info.update(
            name=props.name,
            memory_bytes=int(props.total_memory),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
    else:
        info["name"] = f"CPU ({info['cpu']}, {os.cpu_count()} cores)"
    return info


def reset_peak_memory(device: torch.device | str) -> None:
    """Reset the peak-memory counter of a CUDA device (no-op elsewhere)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device | str) -> int | None:
    """Peak allocated memory on a CUDA device since the last reset; for CPU, the process's
    peak resident set size (``ru_maxrss``), which includes everything the process ever held."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource

        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss_kib) * 1024
    except (ImportError, OSError):  # pragma: no cover - Windows
        return None


def environment_summary(profile: str, device: torch.device | None = None) -> str:
    """Human-readable block for a chapter's setup cell: versions, device, profile."""
    device = device or pick_device()
    versions = library_versions()
    dev = describe_device(device)
    lines = [f"profile : {profile}", f"device  : {dev['name']} ({device})"]
    if "memory_bytes" in dev:
        lines.append(f"memory  : {dev['memory_bytes'] / 2**30:.1f} GiB")
    lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    return "\n".join(lines)
