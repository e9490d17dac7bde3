"""Checkpoint files shared by both training loops: trainable tensors and optimizer state in
safetensors (never pickle), JSON beside them, every file written atomically (temp file + rename),
so an interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

__all__ = ["run_key", "write_json", "save_tensors", "load_into", "save_optimizer", "load_optimizer",
           "CheckpointError", "StepCheckpoints"]


def run_key(*parts: Any) -> str:
    """A short hash of everything that defines a run: checkpoints live under it, so an
    interrupted run resumes and a changed setting starts afresh."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def write_json(path: str | Path, payload: Any, indent: int | None = 1) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=indent), encoding="utf-8")
    tmp.replace(path)
    return path


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``tensors`` to ``path`` (safetensors, ``meta`` embedded) and ``meta`` to ``path.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    safetensors.torch.save_file(tensors, str(tmp), metadata={"nbsupport": json.dumps(meta)})
    tmp.replace(path)
    write_json(path.with_suffix(".json"), meta, indent=2)
    return path


def load_into(params: dict[str, nn.Parameter], expected: set[str], path: str | Path, hint: str) -> None:
    """Copy the tensors of ``path`` into ``params`` (by name), after checking that the file holds
    exactly the ``expected`` names; ``hint`` tells the user how to prepare the model otherwise."""
    path = Path(path)
    tensors = safetensors.torch.load_file(str(path))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: missing tensors {missing[:5]}, unexpected {unexpected[:5]} ({hint})")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t.to(params[name].device, params[name].dtype))


def save_optimizer(opt: torch.optim.Optimizer, path: str | Path) -> dict[str, Any]:
    """Optimizer tensors -> safetensors at ``path``; returns the JSON-able remainder."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain.setdefault(str(idx), {})[k] = v
    safetensors.torch.save_file(tensors, str(path))
    return {"param_groups": sd["param_groups"], "plain_state": plain}


def load_optimizer(opt: torch.optim.Optimizer, path: str | Path, meta: dict[str, Any]) -> None:
    """Inverse of :func:`save_optimizer`."""
    tensors = safetensors.torch.load_file(str(path))
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = t
    for idx, kv in meta["plain_state"].items():
        state.setdefault(int(idx), {}).update(kv)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read; the message names the folder and the fix."""


class StepCheckpoints:
    """Checkpoints of a training loop, published atomically through one small JSON manifest.

    ``save(stage, tensors, optimizer, state)`` writes ``<stage>-<step>.safetensors`` (and
    ``<stage>-<step>.optimizer.safetensors``) under temporary names, renames them, and only then
    replaces ``<stage>.json`` (itself atomically), which names the files and holds the counters.
    A kill at any moment therefore leaves the manifest pointing at one complete, consistent
    checkpoint: the previous one or the new one. Files of older steps are removed afterwards.
    ``load`` raises :class:`CheckpointError` naming the folder when a file is missing or damaged.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def exists(self, stage: str) -> bool:
        return (self.root / f"{stage}.json").is_file()

    def save(self, stage: str, tensors: dict[str, torch.Tensor], opt: torch.optim.Optimizer | None,
             state: dict[str, Any], step: int) -> None:
        weights = self.root / f"{stage}-{step:08d}.safetensors"
        tmp = weights.with_suffix(".tmp")
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(weights)
        manifest: dict[str, Any] = {"state": state, "weights": weights.name, "optimizer": None}
        if opt is not None:
            opt_file = self.root / f"{stage}-{step:08d}.optimizer.safetensors"
            tmp = opt_file.with_suffix(".tmp")
            manifest["optimizer_meta"] = save_optimizer(opt, tmp)
            tmp.replace(opt_file)
            manifest["optimizer"] = opt_file.name
        write_json(self.root / f"{stage}.json", manifest)                 # the commit point
        keep = {weights.name, manifest["optimizer"]}
        for old in self.root.glob(f"{stage}-*.safetensors"):
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def update_state(self, stage: str, state: dict[str, Any]) -> None:
        """Replace the published checkpoint's state (atomically; its files stay as they are)."""
        try:
            manifest = json.loads((self.root / f"{stage}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"no readable {stage!r} checkpoint in {self.root} to update "
                                  f"({exc.__class__.__name__}: {str(exc)[:200]}); {self._fix()}") from exc
        write_json(self.root / f"{stage}.json", {**manifest, "state": state})

    def _fix(self) -> str:
        return f"delete {self.root} to start this run afresh (or restore the folder from a backup)"

    def load(self, stage: str, device: torch.device | str = "cpu",
             opt: torch.optim.Optimizer | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and state of the published checkpoint (and the optimizer state into ``opt``)."""
        try:
            manifest = json.loads((self.root / f"{stage}.json").read_text(encoding="utf-8"))
            tensors = safetensors.torch.load_file(str(self.root / manifest["weights"]), device=str(device))
            if opt is not None and manifest.get("optimizer"):
                load_optimizer(opt, self.root / manifest["optimizer"], manifest["optimizer_meta"])
        except (OSError, ValueError, KeyError, RuntimeError, safetensors.SafetensorError) as exc:
            raise CheckpointError(f"the {stage!r} checkpoint in {self.root} cannot be read "
                                  f"({exc.__class__.__name__}: {str(exc)[:200]}); {self._fix()}") from exc
        return tensors, manifest["state"]

    def load_optimizer(self, stage: str, opt: torch.optim.Optimizer) -> None:
        """Only the optimizer state of the published checkpoint (after checking its state)."""
        try:
            manifest = json.loads((self.root / f"{stage}.json").read_text(encoding="utf-8"))
            load_optimizer(opt, self.root / manifest["optimizer"], manifest["optimizer_meta"])
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, safetensors.SafetensorError) as exc:
            raise CheckpointError(f"the {stage!r} optimizer state in {self.root} cannot be read "
                                  f"({exc.__class__.__name__}: {str(exc)[:200]}); {self._fix()}") from exc
