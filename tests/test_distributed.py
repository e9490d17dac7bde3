"""Both training loops on 2 CPU processes (torchrun + gloo, through Accelerate): the same losses and
weights as one plain process with the same global batch, and a SIGKILL + resume that ends where an
uninterrupted run ends (under 2 processes, and under 1 after 2)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nbsupport.book.cli import main
from nbsupport.core.distributed import rows, share

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

SD = ["sd", "--method", "unet", "--profile", "smoke", "--batch-size", "5", "--device", "cpu"]
VIT = ["vit", "--method", "dvpt", "--profile", "smoke", "--seeds", "0", "--batch-size", "13", "--device", "cpu"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(root: Path) -> dict[str, str]:
    return {**os.environ, "NBSUPPORT_CACHE": str(root / "cache"), "NBSUPPORT_RECORDS": str(root / "records"),
            "OMP_NUM_THREADS": "1"}


def _torchrun(args: list[str], root: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_port()),
           "-m", "nbsupport", "train", *args]
    return subprocess.Popen(cmd, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def _in_process(args: list[str], root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One plain process, no launcher: the chapters' path."""
    for k in ("NBSUPPORT_CACHE", "NBSUPPORT_RECORDS"):
        monkeypatch.setenv(k, _env(root)[k])
    assert main(["train", *args]) == 0


def _run_dir(root: Path, task: str) -> Path:
    (d,) = list((root / "cache" / "checkpoints" / task).iterdir())
    return d


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "records").glob("*.json"))]


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(str(a)), load_file(str(b))
    assert set(x) == set(y) and x
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def _kill_after(proc: subprocess.Popen, root: Path, task: str, counter: str, at_least: int) -> int:
    """SIGKILL the whole launched run once its published checkpoint reaches ``at_least``."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        manifests = list((root / "cache" / "checkpoints" / task).glob("*/last.json"))
        if manifests:
            try:
                done = json.loads(manifests[0].read_text())["state"][counter]
            except (ValueError, KeyError):
                done = 0
            if done >= at_least:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return done
        time.sleep(0.02)
    out = proc.communicate()[0] if proc.poll() is not None else ""
    pytest.fail(f"the run ended before it could be killed: {out[-2000:]}")


def test_rows_split_every_batch_and_the_weights_restore_the_global_mean():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 7, 8):
        losses = torch.rand(n, generator=gen, dtype=torch.float64)        # per-row losses of one global batch
        for world in (1, 2, 3, 4):
            parts = [rows(n, r, world) for r in range(world)]
            empty = [n < world and r >= n for r in range(world)]
            real = [(lo, hi) for (lo, hi), e in zip(parts, empty) if not e]
            assert sorted(i for lo, hi in real for i in range(lo, hi)) == list(range(n))
            # each process: weight x its rows' mean loss; DDP averages over processes
            ddp = sum(share(hi - lo, n, world, 1, e) * losses[lo:hi].mean() for (lo, hi), e in zip(parts, empty)) / world
            assert ddp.item() == pytest.approx(losses.mean().item())


def test_sd_two_processes_match_one_and_resume_after_a_kill(tmp_path, monkeypatch):
    steps = ["--steps", "24"]
    _in_process(SD + steps, tmp_path / "one", monkeypatch)            # reference: one plain process
    _finish(_torchrun(SD + steps, tmp_path / "two"))                   # 2 processes, global micro-batch 5 (3 + 2 rows)
    one, two = _run_dir(tmp_path / "one", "text-to-image"), _run_dir(tmp_path / "two", "text-to-image")
    assert one.name == two.name                                         # the same run key: a chapter reuses it
    assert _max_diff(one / "final.safetensors", two / "final.safetensors") < 1e-4
    (rec_one,), (rec_two,) = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert rec_two["params"]["processes"] == 2 and "processes" not in rec_one["params"]
    assert rec_two["metrics"]["losses"] == pytest.approx(rec_one["metrics"]["losses"], rel=1e-4)

    killed = tmp_path / "killed"
    done = _kill_after(_torchrun(SD + steps, killed), killed, "text-to-image", "step", 6)
    run = _run_dir(killed, "text-to-image")
    assert 6 <= done < 24 and not (run / "final.safetensors").exists()
    out = _finish(_torchrun(SD + steps, killed))                        # resumed, again on 2 processes
    assert f"at step {done}" in out
    assert _max_diff(one / "final.safetensors", run / "final.safetensors") < 1e-4


def test_classification_two_processes_match_one_and_resume_on_one_after_a_kill(tmp_path, monkeypatch):
    epochs = ["--epochs", "5", "--grad-accum", "2"]
    _in_process(VIT + epochs, tmp_path / "one", monkeypatch)
    # 40 images in batches of 13 (7 + 6 rows, 2 micro-batches each) and a last batch of 1: process 1 has
    # no row there and computes on one with weight 0, and so does process 0 for its empty second micro-batch
    _finish(_torchrun(VIT + epochs, tmp_path / "two"))
    one, two = _run_dir(tmp_path / "one", "classification"), _run_dir(tmp_path / "two", "classification")
    assert one.name == two.name
    assert _max_diff(one / "best.safetensors", two / "best.safetensors") < 1e-4
    (rec_one,), (rec_two,) = _records(tmp_path / "one"), _records(tmp_path / "two")
    losses = [[h["train_loss"] for h in r["metrics"]["history"]] for r in (rec_one, rec_two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert rec_two["metrics"]["test_kappa"] == pytest.approx(rec_one["metrics"]["test_kappa"], abs=1e-6)

    killed = tmp_path / "killed"
    done = _kill_after(_torchrun(VIT + epochs, killed), killed, "classification", "epoch", 1)
    assert 1 <= done < 5
    _in_process(VIT + epochs, killed, monkeypatch)                      # resumed by ONE process
    run = _run_dir(killed, "classification")
    assert _max_diff(one / "best.safetensors", run / "best.safetensors") < 1e-4
    (rec,) = _records(killed)
    assert rec["params"]["resumed_from_epoch"] == done


def test_the_4_gpu_accelerate_config_on_the_running_page_is_valid():
    from accelerate.commands.config.config_args import load_config_from_file

    root = Path(__file__).resolve().parent.parent
    cfg = load_config_from_file(str(root / "configs" / "accelerate-4gpu.yaml"))
    assert (cfg.distributed_type.value, cfg.num_processes, cfg.num_machines) == ("MULTI_GPU", 4, 1)
    assert "configs/accelerate-4gpu.yaml" in (root / "book" / "running.md").read_text()
