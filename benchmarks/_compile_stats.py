"""What torch.compile did during a benchmark row: graphs compiled, graph breaks and CUDA-graph
skips (a row labelled "cudagraphs" whose graphs were skipped measured plain compiled kernels)."""

from __future__ import annotations

from collections import Counter
from typing import Any


def _counters() -> dict[str, Counter]:
    from torch._dynamo.utils import counters

    return counters


def snapshot() -> dict[str, int]:
    """The counters now (call before a row, pass to :func:`since`)."""
    c = _counters()
    return {"unique_graphs": c["stats"]["unique_graphs"], "graph_breaks": sum(c["graph_break"].values()),
            "cudagraph_skips": c["inductor"]["cudagraph_skips"]}


def since(before: dict[str, int]) -> dict[str, Any]:
    """What changed since ``before`` (``torch._dynamo.reset()`` leaves these counters as they are)."""
    now = snapshot()
    return {k: now[k] - before[k] for k in now}
