import json

import pytest
import torch

from nbsupport import records
from nbsupport.profiles import PROFILES, get_profile


def test_profiles_order_and_meaning():
    assert list(PROFILES) == ["smoke", "cpu", "gpu", "full"]
    assert get_profile("smoke").random_weights is True
    assert all(not get_profile(n).random_weights for n in ("cpu", "gpu", "full"))
    assert get_profile("gpu").sd_resolution == 512 and get_profile("full").sd_resolution == 512


def test_unknown_profile_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown profile 'tiny'.*smoke, cpu, gpu, full"):
        get_profile("tiny")


def test_record_roundtrip(tmp_path):
    timer = records.RunTimer("cpu")
    path = records.write_record("00_x", "smoke", "fundus-procedural", "random",
                                {"kappa": torch.tensor(0.5), "per_class": [1, 2]}, method="dvpt",
                                params={"lr": 1e-3}, timer=timer, directory=tmp_path)
    assert path.name == "00_x-dvpt-fundus-procedural.json"
    rec = records.read_record(path)
    assert rec.metrics == {"kappa": 0.5, "per_class": [1, 2]}
    assert rec.profile == "smoke" and rec.weights == "random" and rec.method == "dvpt"
    assert rec.wall_time_s is not None and rec.wall_time_s >= 0
    assert rec.device["type"] == "cpu"
    assert rec.versions["torch"] == torch.__version__.split("+")[0] or rec.versions["torch"].startswith(
        torch.__version__.split("+")[0])
    assert [r.name for r in records.load_records(tmp_path)] == [rec.name]


def test_record_rejects_unknown_weights(tmp_path):
    with pytest.raises(ValueError, match="weights='imagenet'"):
        records.write_record("c", "smoke", "d", "imagenet", {}, directory=tmp_path)


def test_read_record_names_missing_field(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"chapter": "c", "profile": "smoke"}))
    with pytest.raises(ValueError, match=r"r.json: run record lacks field\(s\) dataset, weights"):
        records.read_record(p)


def test_records_go_to_env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NBSUPPORT_RECORDS", str(tmp_path / "recs"))
    path = records.write_record("c", "smoke", "d", "random", {"a": 1})
    assert path.parent == tmp_path / "recs"


def test_import_has_no_side_effects():
    import subprocess
    import sys

    code = ("import random, numpy as np, torch; s=torch.initial_seed(); r=random.getstate();"
            "import nbsupport, nbsupport.fundus, nbsupport.datasets, nbsupport.manifests, nbsupport.records,"
            " nbsupport.env, nbsupport.cli, nbsupport.runner, nbsupport.viz;"
            "assert torch.initial_seed()==s and random.getstate()==r; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **__import__('os').environ, "NBSUPPORT_CACHE": "/nonexistent/should/not/be/created"})
    assert out.returncode == 0, out.stderr
    import os
    assert not os.path.exists("/nonexistent/should/not/be/created")
