"""Run a training script unchanged, timing its steps from outside (a helper of ``sd_vs_diffusers.py``).

    SDVD_TIMES=/tmp/times.json python benchmarks/_step_timer.py /path/train_text_to_image.py --args ...

``accelerate.Accelerator.backward`` is wrapped: after each call (and ``torch.cuda.synchronize()``
when CUDA is in use) it records ``time.perf_counter()`` and ``torch.cuda.max_memory_allocated()``.
With one backward pass per optimizer step (gradient accumulation 1), successive differences of the
timestamps are step times (data loading, encoders, forward, backward, optimizer step, logging).
Experiment trackers are switched off (``Accelerator(log_with=None)``): the book's loop has none, and
``--report_to``'s default (tensorboard) may not be installed. The script runs through
``runpy.run_path(script, run_name="__main__")`` with ``sys.argv`` set and its folder first on
``sys.path``, as ``python script.py`` would; the record is written to the file ``$SDVD_TIMES`` names
when the script ends, whether it succeeded or raised.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any


def _install(record: dict[str, Any]) -> None:
    """Wrap ``Accelerator.backward`` (timestamps, peak memory) and ``Accelerator.__init__`` (no trackers)."""
    import accelerate
    import torch

    cuda = torch.cuda.is_available()
    backward, init = accelerate.Accelerator.backward, accelerate.Accelerator.__init__

    def timed_backward(self: Any, loss: Any, **kwargs: Any) -> Any:
        out = backward(self, loss, **kwargs)
        if cuda:
            torch.cuda.synchronize()
            record["max_memory_allocated_at_backward"].append(int(torch.cuda.max_memory_allocated()))
        record["backward_end_s"].append(time.perf_counter())
        return out

    def init_without_trackers(self: Any, *args: Any, **kwargs: Any) -> None:
        record["log_with_requested"] = str(kwargs.get("log_with"))
        kwargs["log_with"] = None
        init(self, *args, **kwargs)

    accelerate.Accelerator.backward = timed_backward
    accelerate.Accelerator.__init__ = init_without_trackers
    record["cuda"] = cuda


def _dump(record: dict[str, Any], path: str) -> None:
    import torch

    if record.get("cuda"):
        record["max_memory_allocated_at_exit"] = int(torch.cuda.max_memory_allocated())
    Path(path).write_text(json.dumps(record), encoding="utf-8")


def main() -> None:
    if len(sys.argv) < 2 or "SDVD_TIMES" not in os.environ:
        raise SystemExit("usage: SDVD_TIMES=out.json python _step_timer.py SCRIPT [ARGS...]")
    out, script = os.environ["SDVD_TIMES"], str(Path(sys.argv[1]).resolve())
    record: dict[str, Any] = {"script": script, "backward_end_s": [], "max_memory_allocated_at_backward": [],
                              "started_s": time.perf_counter()}
    _install(record)
    sys.argv = [script, *sys.argv[2:]]
    sys.path[0] = str(Path(script).parent)        # as `python script.py`: its folder, not this one
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        record["ended_s"] = time.perf_counter()
        _dump(record, out)


if __name__ == "__main__":
    main()
