"""Checkpoint files shared by both training loops: trainable tensors and optimizer state in
safetensors (never pickle), JSON beside them, every file written atomically (temp file + rename),
so an interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

__all__ = ["run_key", "write_json", "save_tensors", "load_into", "save_optimizer", "load_optimizer"]


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
