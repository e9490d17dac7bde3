"""What fits a 16 GB Colab T4? Memory budget of each Stable Diffusion method at 512 px.

``budget`` adds up the parts that scale with the parameters, which we can compute exactly:

- frozen weights in half precision (2 bytes each), trainable weights in fp32 (4 bytes);
- gradients of the trainable parameters (fp32, 4 bytes);
- optimizer state: AdamW 8 bytes per trainable parameter, 8-bit AdamW (bitsandbytes) 2 bytes;

plus the activations kept for the backward pass, which we do not model: they are *measured*,
as the peak of a run of the book's training loop minus the parts above (a GPU result file of
``benchmarks/sd_cost.py``, same resolution, batch and gradient checkpointing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["T4_USABLE_BYTES", "SD15_SIZES", "state_bytes", "activation_bytes_from_result", "budget_table"]

T4_USABLE_BYTES = int(14.75 * 2**30)     # a 16 GB T4 leaves about 14.75 GiB to PyTorch
SD15_SIZES = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}


def state_bytes(trainable: int, optimizer: str = "adamw8bit") -> dict[str, int]:
    """Bytes of weights, gradients and optimizer state for ``trainable`` parameters out of SD 1.5."""
    total = sum(SD15_SIZES.values())
    per_opt = {"adamw": 8, "adamw8bit": 2}[optimizer]
    frozen = total - min(trainable, total)
    return {"frozen_weights": 2 * frozen, "trainable_weights": 4 * trainable, "gradients": 4 * trainable,
            "optimizer": per_opt * trainable}


def activation_bytes_from_result(row: dict[str, Any]) -> int | None:
    """Activations of one ``sd_cost`` result row: measured peak minus the computed states
    (the benchmark used torch AdamW when its notices say so)."""
    if row.get("peak_memory_bytes") is None:
        return None
    opt = "adamw8bit" if any("AdamW8bit" in n for n in row.get("notices", [])) else "adamw"
    # the benchmark loop trains with PEFT parameters *added* to the model: count them as trainable
    states = state_bytes(row["trainable"], opt)
    return max(0, int(row["peak_memory_bytes"]) - sum(states.values()))


def budget_table(result: dict[str, Any] | str | Path, optimizer: str = "adamw8bit") -> list[dict[str, Any]]:
    """Per method: computed states + measured activations = estimated peak, and whether it fits a T4.

    ``result`` is an ``sd_cost`` benchmark result (a dict, or the path of its JSON file)."""
    data = result if isinstance(result, dict) else json.loads(Path(result).read_text(encoding="utf-8"))
    rows = []
    for r in data["results"]:
        if "error" in r:
            rows.append({"method": r["method"], "error": r["error"]})
            continue
        act = activation_bytes_from_result(r)
        states = state_bytes(r["trainable"], optimizer)
        total = sum(states.values()) + (act or 0)
        rows.append({"method": r["method"], "trainable": r["trainable"], **{k: v / 2**30 for k, v in states.items()},
                     "activations": (act or 0) / 2**30, "total_GiB": total / 2**30,
                     "fits_T4": total <= T4_USABLE_BYTES,
                     "measured_on": f"{data['device']}, batch {data['batch']}, {data['precision']}"})
    return rows
