import json

import pytest
import torch

from nbsupport.core import records
from nbsupport.core.profiles import PROFILES, get_profile


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
            "import nbsupport, nbsupport.data.fundus, nbsupport.data.datasets, nbsupport.data.manifests, nbsupport.core.records,"
            " nbsupport.core.env, nbsupport.book.cli, nbsupport.book.runner, nbsupport.book.viz;"
            "assert torch.initial_seed()==s and random.getstate()==r; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={
        **__import__('os').environ, "NBSUPPORT_CACHE": "/nonexistent/should/not/be/created"})
    assert out.returncode == 0, out.stderr
    import os
    assert not os.path.exists("/nonexistent/should/not/be/created")


def test_chapter_object_sets_up_and_writes_the_record(capsys):
    import random

    import torch

    from nbsupport import book

    ch = book.start("xx_demo", "smoke", seed=3, show=True)
    a = (random.random(), torch.rand(1).item())
    book.start("xx_demo", "smoke", seed=3, show=False)
    assert (random.random(), torch.rand(1).item()) == a          # seeded alike
    assert ch.dataset == get_profile("smoke").default_dataset and ch.device.type == "cpu"
    assert book.start("xx", "smoke", task="text-to-image", show=False).dataset == get_profile("smoke").sd_dataset
    assert ch.provenance.startswith("profile smoke | data fundus-procedural | device CPU") and "torch " in ch.provenance
    assert ch.finish(weights="random", metrics={"x": 1.5}, params={"k": 2}) is None   # nothing echoed
    path = ch.record_path
    rec = records.read_record(path)
    assert (rec.chapter, rec.profile, rec.metrics, rec.params) == ("xx_demo", "smoke", {"x": 1.5}, {"seed": 3, "seeds": [0, 1], "k": 2})
    assert rec.wall_time_s is not None and rec.device["type"] == "cpu"
    assert f"run record: {path.name}" in capsys.readouterr().out
    assert ch.generated_dir("eval", "lora").parts[-5:] == ("generated", "smoke", "fundus-procedural", "eval", "lora")


def test_the_banner_says_when_a_run_used_other_data_than_the_prose_describes(monkeypatch):
    import IPython.display

    from nbsupport import book

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj.data))
    ch = book.start("xx_demo", "smoke", dataset="fundus-clinic", show=True)
    assert "| data fundus-clinic |" in ch.provenance
    assert "**Your data, `fundus-clinic`:**" in shown[-1] and "(`fundus-procedural` at this profile)" in shown[-1]
    book.start("xx_demo", "smoke", show=True)                              # the default: nothing to say
    assert "Your data" not in shown[-1]
    book.start("xx_demo", "smoke", dataset="all", task="none", show=True)   # a page that reads records
    assert "Your data" not in shown[-1] and "| data" not in shown[-1]


def test_a_manifest_given_by_path_names_files_by_its_manifest_name(tmp_path, monkeypatch):
    import shutil

    from nbsupport import book
    from nbsupport.core.paths import repo_root

    monkeypatch.setenv("NBSUPPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NBSUPPORT_RECORDS", str(tmp_path / "recs"))
    mine = tmp_path / "elsewhere" / "mine.yaml"
    mine.parent.mkdir()
    shutil.copy(repo_root() / "data_manifests" / "fundus-procedural.yaml", mine)
    ch = book.start("xx_demo", "smoke", dataset=str(mine), show=False)
    assert ch.dataset_name == "fundus-procedural"                       # the manifest's own name
    assert ch.generated_dir("eval").is_relative_to(tmp_path / "cache")  # not inside the manifest's folder
    ch.finish(weights="none", metrics={})
    assert ch.record_path.name == "xx_demo-fundus-procedural.json"
