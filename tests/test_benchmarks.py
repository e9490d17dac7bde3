"""Benchmark scripts' own logic (their GPU runs are not tests: they write JSON results)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load(name: str, monkeypatch: pytest.MonkeyPatch):
    """Import ``benchmarks/<name>.py`` as its command line would (its folder first on sys.path)."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sd_vs_diffusers_speedups_pair_each_mode_with_diffusers(monkeypatch):
    pytest.importorskip("diffusers")
    bench = _load("sd_vs_diffusers", monkeypatch)
    rows = [{"runner": "diffusers", "method": "unet", "cached_latents": False, "samples_per_s": 10.0},
            {"runner": "nbsupport", "method": "unet", "cached_latents": False, "compile": None, "samples_per_s": 9.0},
            {"runner": "nbsupport", "method": "unet", "cached_latents": True, "compile": None, "samples_per_s": 12.0},
            {"runner": "nbsupport", "method": "unet", "cached_latents": False, "compile": "cudagraphs",
             "samples_per_s": 11.0},
            {"runner": "nbsupport", "method": "unet", "cached_latents": True, "compile": "cudagraphs",
             "samples_per_s": None, "error": "out of memory"}]
    assert bench.speedups(rows) == {"unet": {"uncached_over_diffusers": pytest.approx(0.9),
                                             "cached_over_diffusers": pytest.approx(1.2),
                                             "uncached_cudagraphs_over_diffusers": pytest.approx(1.1),
                                             "cached_cudagraphs_over_diffusers": None}}
    base = ["--diffusers-examples", "x", "--device", "cpu"]
    assert bench.parse(base + ["--compile", "none", "cudagraphs", "--warmup", "3"]).compile == ["none", "cudagraphs"]
    with pytest.raises(SystemExit):                          # compilation and graph recording would be timed
        bench.parse(base + ["--diffusers-compile", "cudagraphs", "--warmup", "2"])


def test_sd_sampling_ratios_compare_like_with_like(monkeypatch):
    pytest.importorskip("diffusers")
    bench = _load("sd_sampling", monkeypatch)
    rows = [{"runner": "diffusers", "compile": None, "images_per_s": 2.0},
            {"runner": "book", "compile": None, "images_per_s": 1.8},
            {"runner": "diffusers", "compile": "cudagraphs", "images_per_s": 3.0},
            {"runner": "book", "compile": "cudagraphs", "error": "out of memory"}]
    assert bench.ratios(rows, ["none", "cudagraphs"]) == {
        "book_over_diffusers": {"none": pytest.approx(0.9), "cudagraphs": None},
        "compiled_over_eager": {"diffusers_cudagraphs": pytest.approx(1.5), "book_cudagraphs": None}}
