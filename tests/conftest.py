"""Shared fixtures: an isolated cache and records directory for every test."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the cache and run records at temporary folders and run from the repository root."""
    base = tmp_path_factory.mktemp("nbs")
    monkeypatch.setenv("NBSUPPORT_CACHE", str(base / "cache"))
    monkeypatch.setenv("NBSUPPORT_RECORDS", str(base / "records"))
    monkeypatch.chdir(ROOT)
