"""Every chapter in _toc.yml: committed clean, parameterised, executed at smoke, and in the website.

The chapters are executed once per session (papermill) by building the book; each chapter's test
then asserts on the run record the chapter wrote, and the book test on its HTML page.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from nbsupport.paths import repository_url
from nbsupport.records import read_record
from nbsupport.runner import build_book, toc_chapters

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = toc_chapters(ROOT)


def test_toc_lists_every_notebook():
    on_disk = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert sorted(CHAPTERS) == on_disk


@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_clean_and_parameterised(nb_path):
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


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """Execute every chapter at profile=smoke and build the website, once."""
    build_dir = tmp_path_factory.mktemp("book")
    html = build_book("smoke", root=ROOT, build_dir=build_dir, log=lambda s: None)
    return build_dir, html


# What each chapter's run record must report (metric keys), beyond the common fields.
EXPECTED_METRICS = {
    "00_setup_and_data": {"n_train", "n_val", "n_test", "class_counts", "generator_images_per_s"},
}


@pytest.mark.notebooks
@pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_at_smoke_and_writes_its_record(built_book, nb_path):
    build_dir, _ = built_book
    recs = [read_record(p) for p in (build_dir / "records").glob("*.json")]
    mine = [r for r in recs if r.chapter == nb_path.stem]
    assert mine, f"{nb_path.name} wrote no run record"
    for rec in mine:
        assert rec.profile == "smoke"
        assert rec.device and rec.versions.get("torch")
        assert EXPECTED_METRICS.get(nb_path.stem, set()) <= set(rec.metrics), rec.metrics.keys()
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
