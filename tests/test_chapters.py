"""Every chapter in _toc.yml: committed clean, parameterised, executed at smoke, and in the website.

The chapters are executed once per session (papermill) by building the book; each chapter's test
then asserts on the run record the chapter wrote, and the book test on its HTML page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from nbsupport.core.paths import repository_url
from nbsupport.core.records import read_record
from nbsupport.book.runner import build_book, toc_chapters

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = toc_chapters(ROOT)


def test_toc_lists_every_notebook():
    on_disk = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(CHAPTERS) == on_disk


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_clean_and_parameterised(nb_path):
    raw = json.loads(nb_path.read_text(encoding="utf-8"))      # nbformat.read would invent missing ids
    ids = [c.get("id") for c in raw["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), f"{nb_path.name}: a cell without an id, or a repeated id"
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{nb_path.name} has outputs"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{nb_path.name}: expected one cell tagged 'parameters'"
    first = next(line for line in params[0].source.splitlines() if line.strip() and not line.startswith("#"))
    assert first.replace(" ", "").startswith('profile="smoke"'), f"{nb_path.name}: first knob must be profile"
    install = [c for c in nb.cells if c.cell_type == "code" and "find_spec(\"nbsupport\")" in c.source]
    assert install, f"{nb_path.name}: no install cell"
    assert f'REPO_URL = "{repository_url(ROOT)}"' in install[0].source, \
        f"{nb_path.name}: install cell URL differs from repository.url in _config.yml"


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_papermill_sees_every_knob_of_the_parameters_cell(nb_path):
    """``nbsupport run -p NAME`` accepts only the names papermill parses from the parameters cell;
    a comment it cannot parse (one containing ``=`` after a multi-line default) hides a knob."""
    import ast

    import papermill as pm

    nb = nbformat.read(nb_path, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = [t.id for node in ast.parse(params.source).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    assert list(pm.inspect_notebook(str(nb_path))) == assigned, nb_path.name


CODE_COLUMNS = 90     # what a 1280 px window shows of a code cell at the site's font size


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_code_fits_the_page_width(nb_path):
    """No code line wider than the website's code column: a wrapped line loses its indent."""
    nb = nbformat.read(nb_path, as_version=4)
    wide = [f"cell {c.get('id')}: {line.strip()[:50]}... ({len(line)} columns)"
            for c in nb.cells if c.cell_type == "code"
            for line in c.source.splitlines() if len(line) > CODE_COLUMNS]
    assert not wide, f"{nb_path.name}: lines over {CODE_COLUMNS} columns:\n" + "\n".join(wide)


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_setup_is_one_line_of_machinery(nb_path):
    """The setup cell is at most three imports plus ``ch = book.start(...)``; no chapter reaches into
    the core's machinery (env, paths, profiles), and the run record is written by ``ch.finish``."""
    nb = nbformat.read(nb_path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    setup = [s for s in code if "book.start(" in s]
    assert len(setup) == 1, f"{nb_path.name}: expected one cell calling book.start"
    lines = [ln for ln in setup[0].splitlines() if ln.strip()]
    imports = [ln for ln in lines if ln.startswith(("import ", "from "))]
    assert len(imports) <= 3, f"{nb_path.name}: setup has {len(imports)} import lines"
    assert lines[len(imports)].startswith(f'ch = book.start("{nb_path.stem}"'), f"{nb_path.name}: setup line"
    everything = "\n".join(code)
    for module in ("env", "paths", "profiles"):
        assert f"nbsupport.core.{module}" not in everything and f"import {module}" not in everything, \
            f"{nb_path.name} imports nbsupport.core.{module}"
    assert "write_record(" not in everything and "ch.finish(" in code[-1], \
        f"{nb_path.name}: the run record should be written by ch.finish in the last code cell"


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_every_model_a_chapter_loads_is_a_parameter(nb_path):
    nb = nbformat.read(nb_path, as_version=4)
    params = next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    if "make_backbone(profile" in code:
        assert re.search(r"^weights = None", params, re.M) and "weights_path=weights" in code, nb_path.name
    if "load_for_profile(" in code:
        assert re.search(r"^sd_weights = None", params, re.M) and "weights=sd_weights" in code, nb_path.name


def test_a_local_weights_file_replaces_the_profiles_backbone(tmp_path):
    import safetensors.torch
    import timm

    from nbsupport.vit.experiment import make_backbone

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64)
    safetensors.torch.save_file(ref.state_dict(), str(tmp_path / "mine.safetensors"))
    bb = make_backbone("smoke", num_classes=5, weights_path=str(tmp_path / "mine.safetensors"))
    assert bb.weights == f"local:{tmp_path / 'mine.safetensors'}"
    model = bb.factory()
    assert all(np.allclose(model.state_dict()[k], v) for k, v in ref.state_dict().items())


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Execute every chapter at profile=smoke and build the website, once."""
    build_dir = tmp_path_factory.mktemp("book")
    with pytest.MonkeyPatch.context() as mp:   # session fixtures run before the per-test isolation
        mp.setenv("NBSUPPORT_CACHE", str(build_dir / "cache"))
        mp.chdir(ROOT)
        html = build_book("smoke", root=ROOT, build_dir=build_dir, log=lambda s: None)
    return build_dir, html


# What each chapter's run record must report (metric keys), beyond the common fields.
EXPECTED_METRICS = {
    "00_setup_and_data": {"n_train", "n_val", "n_test", "class_counts", "generator_images_per_s"},
    "01_vit_and_peft": {"probe", "lora_max_abs_diff", "vit_b16_trainable"},
    "02_dvpt_from_scratch": {"scratch_vs_library_max_abs_diff", "init_gap_to_frozen", "vit_b16_dvpt_pct", "ablation"},
    "03_benchmark": {"methods"},
    "04_label_efficiency": {"kappa", "labelled_data_saved", "storage_saved_at_n_tasks"},
    "05_stable_diffusion": {"vae_psnr_db", "latent_shape", "sd15_trainable", "t4_fit_8bit", "t4_fit_adamw"},
    "06_sd_finetuning": {"methods", "sd15_trainable", "generated_manifests", "generated_train_manifests"},
    "07_evaluation": {"scores", "noise_floor", "per_class_alignment", "per_condition", "judge", "fid_extractor"},
    "08_synthetic_data": {"results", "summary", "leakage_checked"},
    "10_results": {"n_records", "chapters", "pareto_front"},
    "09_segmentation": {"methods", "best", "mask_kinds"},
}
# Per-method records (chapter, method set) written by nbsupport.vit.experiment.run_method.
METHOD_RECORD_KEYS = {"test_kappa", "test_accuracy", "test_auc", "test_f1", "trainable", "checkpoint_bytes",
                      "step_time_s", "history"}
SEGMENTATION_RECORD_KEYS = {"test_dice", "test_iou", "test_dice_per_class", "trainable", "checkpoint_bytes",
                            "step_time_s", "history"}


@pytest.mark.notebooks
@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_at_smoke_and_writes_its_record(built_book, nb_path):
    build_dir, _ = built_book
    recs = [read_record(p) for p in (build_dir / "records").glob("*.json")]
    mine = [r for r in recs if r.chapter == nb_path.stem]
    assert mine, f"{nb_path.name} wrote no run record"
    summary = [r for r in mine if r.method is None]
    assert len(summary) == 1, f"{nb_path.name}: expected one chapter record, found {len(summary)}"
    assert EXPECTED_METRICS.get(nb_path.stem, set()) <= set(summary[0].metrics), summary[0].metrics.keys()
    for rec in mine:
        assert rec.profile == "smoke" and rec.weights == ("none" if nb_path.stem == "00_setup_and_data" else "random")
        assert rec.device and rec.versions.get("torch") and rec.wall_time_s is not None
        if rec.method is not None and (nb_path.stem < "05" or nb_path.stem >= "07"):
            keys = SEGMENTATION_RECORD_KEYS if nb_path.stem == "09_segmentation" else METHOD_RECORD_KEYS
            assert keys <= set(rec.metrics), (rec.name, rec.metrics.keys())
            score = "test_dice" if nb_path.stem == "09_segmentation" else "test_kappa"
            assert -1.0 <= rec.metrics[score] <= 1.0
        elif rec.method is not None:
            assert {"losses", "test_loss_before", "test_loss_after", "trainable"} <= set(rec.metrics)
    executed = nbformat.read(build_dir / "executed" / nb_path.relative_to(ROOT), as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "Traceback" not in text


@pytest.mark.notebooks
def test_chapter00_record_values(built_book):
    build_dir, _ = built_book
    rec = read_record(build_dir / "records" / "00_setup_and_data-fundus-procedural.json")
    assert (rec.metrics["n_train"], rec.metrics["n_val"], rec.metrics["n_test"]) == (40, 20, 20)
    assert sum(rec.metrics["class_counts"]["train"]) == 40
    means = list(rec.metrics["mean_lesions_per_grade"].values())
    assert means[0] == 0 and means == sorted(means)
    assert rec.metrics["generator_images_per_s"]["64"] > 0


def _records(build_dir, chapter):
    return {r.name: r for r in (read_record(p) for p in (build_dir / "records").glob("*.json")) if r.chapter == chapter}


@pytest.mark.notebooks
def test_chapter01_lora_from_scratch_matches_peft(built_book):
    rec = _records(built_book[0], "01_vit_and_peft")["01_vit_and_peft-fundus-procedural"]
    assert rec.metrics["lora_max_abs_diff"] < 1e-5
    assert rec.metrics["lora_params_ours"] == rec.metrics["lora_params_peft"] > 0
    assert rec.metrics["vit_b16_trainable"]["linear"] == 768 * 5 + 5


@pytest.mark.notebooks
def test_chapter02_dvpt_scratch_equals_library(built_book):
    rec = _records(built_book[0], "02_dvpt_from_scratch")["02_dvpt_from_scratch-fundus-procedural"]
    assert rec.metrics["scratch_vs_library_max_abs_diff"] < 1e-5
    assert rec.metrics["init_gap_to_frozen"] == 0.0
    assert 0.45 < rec.metrics["vit_b16_dvpt_pct"] < 0.55
    abl = rec.metrics["ablation"]
    assert set(abl) == {"DVPT", "no cross-attention", "no sharing", "inject [CLS] only"}
    assert abl["no sharing"]["trainable"] > abl["DVPT"]["trainable"] > abl["no cross-attention"]["trainable"]


@pytest.mark.notebooks
def test_chapter03_every_method_ran(built_book):
    recs = _records(built_book[0], "03_benchmark")
    summary = recs["03_benchmark-fundus-procedural"]
    assert set(summary.metrics["methods"]) == {"linear", "full", "vpt_shallow", "vpt_deep", "lora", "adaptformer",
                                               "bitfit", "ssf", "dvpt"}
    seeds = summary.params["seeds"]
    assert len(seeds) >= 2
    for m, row in summary.metrics["methods"].items():
        per_seed = [recs[f"03_benchmark-{m}-fundus-procedural-s{s}"].metrics["test_kappa"] for s in seeds]
        assert row["per_seed_kappa"] == per_seed and row["seeds"] == len(seeds)
        assert row["test_kappa"] == pytest.approx(np.mean(per_seed))
        assert row["test_kappa_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert summary.metrics["linear_random_init"] is None          # smoke: the backbone is random already
    findings = summary.metrics["findings"]
    assert 5 <= len(findings) <= 6 and findings[-1].startswith("Best mean Kappa: ")   # 4 DVPT comparisons (+ best vs DVPT)
    gaps = summary.metrics["paired_bootstrap"]                   # gap -> its verdicts by both yardsticks
    assert gaps and {g["vs_seeds"] for g in gaps.values()} <= {"beyond", "barely beyond", "within", "one seed"}
    for g in summary.metrics["separated_by_both"]:               # only "beyond", never "barely beyond", separates
        assert gaps[g]["vs_seeds"] == "beyond" and gaps[g]["test_sets_vs_0"] == "clear of 0"


@pytest.mark.notebooks
def test_chapter04_fractions_and_storage(built_book):
    rec = _records(built_book[0], "04_label_efficiency")["04_label_efficiency-fundus-procedural"]
    assert len(rec.metrics["kappa"]) == 4 * 4
    assert len(rec.metrics["per_seed_kappa"]) == 4 * 4 * len(rec.params["seeds"])
    saved = rec.metrics["labelled_data_saved"]
    assert saved is None or set(saved) == {"linear", "full", "lora", "dvpt"}
    saved = rec.metrics["storage_saved_at_n_tasks"]
    assert saved["DVPT"] > 0.9 and saved["Full fine-tuning"] == 0.0


@pytest.mark.notebooks
def test_chapter05_sizes_and_memory(built_book):
    rec = _records(built_book[0], "05_stable_diffusion")["05_stable_diffusion-fundus-procedural"]
    assert rec.metrics["sd15_trainable"]["lora"] == 1_594_368
    assert rec.metrics["latent_shape"] == [4, 8, 8]          # 64 px / 8
    assert all(rec.metrics["t4_fit_8bit"].values())
    assert "all" in rec.metrics["too_big_for_t4"]["adamw"]


@pytest.mark.notebooks
def test_chapter06_every_configuration_trained_and_generated(built_book):
    import json as _json

    recs = _records(built_book[0], "06_sd_finetuning")
    summary = recs["06_sd_finetuning-fundus-procedural"]
    assert len(summary.metrics["methods"]) == 11
    for row in summary.metrics["methods"].values():
        assert row["trainable"] > 0 and row["final_loss"] > 0
    assert set(summary.metrics["generated_manifests"]) == set(summary.metrics["methods"]) | {"pretrained"}
    for m, manifest in summary.metrics["generated_manifests"].items():
        images = _json.loads(open(manifest).read())["images"]
        assert len(images) == 8 and all(e["method"] == m for e in images)
    assert recs["06_sd_finetuning-lora-fundus-procedural"].metrics["trainable"] < \
        recs["06_sd_finetuning-unet-fundus-procedural"].metrics["trainable"]


@pytest.mark.notebooks
def test_chapter07_scores_every_generator(built_book):
    rec = _records(built_book[0], "07_evaluation")["07_evaluation-fundus-procedural"]
    scores = rec.metrics["scores"]
    assert len(scores) == 12 and "pretrained" in scores              # eleven methods and the model before them
    for row in scores.values():
        assert row["fid"] >= 0 and row["kid_std"] > 0 and row["n"] == 8
        assert 1.0 <= row["vendi_features"] <= 8.0 + 1e-6 and 1.0 <= row["vendi_pixels"] <= 8.0 + 1e-6
        assert 0.0 <= row["align_accuracy"] <= 1.0
    assert rec.metrics["noise_floor"]["fid"] >= 0
    n_cmp = rec.metrics["real_vendi_at_n"]["n"]                  # Vendi compared at one N on both sides
    assert 1 <= n_cmp <= 8 and set(rec.metrics["vendi_at_n"]) == set(scores)
    assert 0.0 <= rec.metrics["judge_reference_accuracy"] <= 1.0
    assert "pocket ViT" in rec.metrics["fid_extractor"] and rec.metrics["judge"]["method"] == "full"


@pytest.mark.notebooks
def test_chapter08_protocol(built_book):
    rec = _records(built_book[0], "08_synthetic_data")["08_synthetic_data-fundus-procedural"]
    assert rec.metrics["leakage_checked"] is True
    results = rec.metrics["results"]
    assert len(results) == 2 * (2 * (2 + 3) + 3)       # 2 seeds x (2 fractions x (2 real-only + 3 mixed) + 3 synthetic-only)
    synthetic_only = [r for r in results if r["fraction"] == 0.0]
    assert len(synthetic_only) == 6 and all(r["n_train"] == 8 for r in synthetic_only)
    assert all(r["count"] == 2 for r in rec.metrics["summary"])
    for f in (0.1, 0.5):                                 # the control gets the mixed runs' optimizer steps, on real images only
        rows = {r["generator"]: r for r in results if r["fraction"] == f}
        plain, matched, mixed = rows["none (real only)"], rows["none (real only, steps matched)"], rows["unet"]
        assert plain["n_train"] == mixed["n_train"] - 8 and matched["n_train"] == mixed["n_train"]
        assert plain["steps"] < mixed["steps"] == matched["steps"]
    assert len(rec.metrics["gains"]) == 2 * 3 * 2 and len({r["lr"] for r in results}) == 1   # fractions x generators x controls


@pytest.mark.notebooks
def test_chapter09_every_method_segments_with_seeds(built_book):
    rec = _records(built_book[0], "09_segmentation")["09_segmentation-fundus-clinic-seg"]
    assert rec.metrics["mask_kinds"] == ["vessels", "optic_disc", "haemorrhages", "hard_exudates"]
    rows = rec.metrics["methods"]
    assert set(rows) == {"linear", "full", "vpt_deep", "lora", "adaptformer", "bitfit", "ssf", "dvpt"}
    for row in rows.values():
        assert len(row["per_seed_dice"]) == 2 and 0 <= row["test_dice"] <= 1 and 0 <= row["test_iou"] <= row["test_dice"] + 1e-9
        assert set(row["dice_per_class"]) == set(rec.metrics["mask_kinds"])
    assert rows["linear"]["trainable"] < rows["lora"]["trainable"] < rows["full"]["trainable"]


@pytest.mark.notebooks
def test_chapter10_regenerates_from_records(built_book):
    rec = _records(built_book[0], "10_results")["10_results-all"]
    assert rec.metrics["n_records"] > 50
    assert {"00_setup_and_data", "03_benchmark", "06_sd_finetuning", "08_synthetic_data", "09_segmentation"} <= set(rec.metrics["chapters"])
    assert rec.metrics["pareto_front"]


@pytest.mark.book
def test_book_has_a_page_per_chapter(built_book):
    _, html = built_book
    assert (html / "index.html").is_file()
    for nb in CHAPTERS:
        page = html / nb.relative_to(ROOT).with_suffix(".html")
        assert page.is_file(), f"no HTML for {nb.name}"
        text = page.read_text(encoding="utf-8")
        assert "Traceback" not in text
    smoke_note = (html / "notebooks" / "00_setup_and_data.html").read_text(encoding="utf-8")
    assert "randomly initialised" in smoke_note and "<img" in smoke_note
    for page in ("book/running.html", "book/add_a_dataset.html", "book/references.html"):
        assert (html / page).is_file()


@pytest.mark.book
def test_site_check_passes(built_book):
    """Every chapter page has a figure; no page shows a traceback, a path of this machine, a raw nan,
    or a broken internal link; the injected parameters are hidden and smoke results are labelled."""
    from nbsupport.book.runner import SMOKE_LABEL
    from nbsupport.book.site import check_site, page_text
    from nbsupport.core.paths import cache_dir

    build_dir, html = built_book
    chapters = [str(nb.relative_to(ROOT).with_suffix(".html")) for nb in CHAPTERS]
    problems = check_site(html, chapters, [build_dir, cache_dir(), Path.home(), ROOT])
    assert not problems, "\n".join(problems)
    page = (html / "notebooks" / "03_benchmark.html").read_text(encoding="utf-8")
    assert SMOKE_LABEL in page
    # the parameters cell shows once; papermill's injected copy of it is removed from the page
    assert len(re.findall(r'profile\s*=\s*"smoke"', page_text(page))) == 1
