"""The command line: data commands and `run` on a small notebook (success and failing cell)."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from nbsupport.book.cli import main


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "fundus-procedural" in out and "retinamnist-224" in out and "manual" in out


def test_data_list_reports_an_invalid_manifest_and_lists_the_rest(tmp_path, monkeypatch, capsys):
    import shutil

    from nbsupport.data import manifests

    shutil.copy(manifests.manifests_dir() / "fundus-procedural.yaml", tmp_path / "fundus-procedural.yaml")
    (tmp_path / "broken.yaml").write_text("name: broken\ntasks: [classification]\n")
    monkeypatch.setattr(manifests, "manifests_dir", lambda: tmp_path)
    assert main(["data", "list"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith("broken") and "INVALID" in line for line in out)
    assert any(line.startswith("fundus-procedural") and "synthetic" in line for line in out)


def test_data_describe(capsys):
    assert main(["data", "describe", "aptos2019"]) == 0
    out = capsys.readouterr().out
    assert "APTOS 2019" in out and "license" in out and "Karthik" in out


def test_data_verify_synthetic(capsys):
    assert main(["data", "verify", "fundus-procedural", "--max-images", "5"]) == 0
    assert '"source": "synthetic"' in capsys.readouterr().out


def test_data_errors_exit_2_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ntitle: x\n")
    assert main(["data", "describe", str(bad)]) == 2
    assert "bad.yaml: field 'tasks': missing required field" in capsys.readouterr().err
    assert main(["data", "fetch", "chexpert"]) == 2
    assert "must be downloaded by hand" in capsys.readouterr().err


def _notebook(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nvalue = 1')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_run_injects_parameters_and_reports_record(tmp_path):
    nb = tmp_path / "ch.ipynb"
    _notebook(nb, "from nbsupport.core import records\n"
                  "records.write_record('ch', profile, 'd', 'random', {'value': value})")
    out = subprocess.run([sys.executable, "-m", "nbsupport", "run", str(nb), "-p", "value", "41",
                          "--profile", "cpu", "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "executed copy:" in out.stdout and "ch-d.json" in out.stdout
    import json

    printed = next(line.split(":", 1)[1].strip() for line in out.stdout.splitlines() if line.startswith("run record"))
    rec = json.loads(open(printed).read())
    assert rec["metrics"] == {"value": 41} and rec["profile"] == "cpu"


def test_run_failing_cell_fails_the_command(tmp_path):
    nb = tmp_path / "bad.ipynb"
    _notebook(nb, "raise ValueError('the answer is ' + str(value))")
    out = subprocess.run([sys.executable, "-m", "nbsupport", "run", str(nb), "--output", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "ValueError: the answer is 1" in out.stderr


def test_unknown_parameter_fails_before_running(tmp_path, capsys):
    nb = tmp_path / "ch.ipynb"
    _notebook(nb, "open('ran', 'w').write('yes')")
    assert main(["run", str(nb), "-p", "vlaue", "3", "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "no parameter(s) ['vlaue']" in err and "profile, value" in err
    assert not (tmp_path / "ran").exists()


def test_unknown_profile_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["run", "x.ipynb", "--profile", "huge"])


def test_params_vit_json(capsys):
    import json

    assert main(["params", "vit", "--backbone", "vit_tiny_patch16_224", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == ["linear", "full", "vpt_shallow", "vpt_deep", "lora", "adaptformer",
                                           "bitfit", "ssf", "dvpt"]
    by = {r["method"]: r for r in rows}
    assert by["linear"]["trainable"] == 192 * 5 + 5 and by["full"]["trainable_pct"] > 100


def test_params_vit_table(capsys):
    assert main(["params", "vit", "--backbone", "vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "dvpt" in out and "% backbone" in out


def test_params_sd_json(capsys):
    import json

    pytest.importorskip("diffusers")
    assert main(["params", "sd", "--json"]) == 0
    rows = {r["method"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["lora"]["trainable"] == 1_594_368 and rows["bitfit"]["trainable"] == 343_684
    assert rows["all"]["trainable"] == 859_520_964 + 123_060_480 + 83_653_863


@pytest.mark.notebooks
def test_colab_simulation_runs_the_gpu_profiles_code_path_on_a_cpu(tmp_path):
    """benchmarks/colab_sim.py --reduced: chapters 03 and 06 at profile=gpu, offline, from local
    snapshots (a ViT weights file, a diffusers SD folder) and data files in the real formats."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "benchmarks" / "colab_sim.py"), "--reduced", "--methods", "lora",
                           "--results", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(next(tmp_path.glob("colab_sim-*-reduced.json")).read_text())
    assert result["chapters"]["03_benchmark"]["methods"]["lora"]["fits"]
    sd = result["chapters"]["06_sd_finetuning"]["methods"]["lora"]
    assert sd["fits"] and sd["step_s"] > 0
