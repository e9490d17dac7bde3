"""Execute chapters with papermill and build the website from the executed copies.

The source notebooks stay output-free; executed copies go to ``_build/executed/`` and the book is
built from a staging copy with Jupyter Book's own execution turned off.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from nbsupport.core.paths import RECORDS_ENV, repo_root
from nbsupport.core.profiles import get_profile

__all__ = ["ChapterFailed", "ExecutedChapter", "toc_chapters", "execute_chapter", "build_book", "chapter_key",
           "reads_records", "SMOKE_LABEL"]

#: What a page built at a random-weights profile says under every figure and table.
SMOKE_LABEL = "smoke: not a result (tiny random models; run the chapter at profile cpu or gpu)"


class ChapterFailed(RuntimeError):
    """A chapter cell raised: carries the cell's error for the command line."""


@dataclass
class ExecutedChapter:
    """Result of :func:`execute_chapter`."""

    source: Path
    output: Path
    records: list[Path]
    seconds: float


def _toc_files(node: Any) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(str(node["file"]))
        for key in ("root", "parts", "chapters", "sections"):
            if key in node:
                val = node[key]
                if key == "root":
                    out.append(str(val))
                else:
                    for child in val:
                        out += _toc_files(child)
    elif isinstance(node, list):
        for child in node:
            out += _toc_files(child)
    return out


def toc_chapters(root: Path | None = None) -> list[Path]:
    """The chapter notebooks listed in ``_toc.yml``, in book order."""
    root = root or repo_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    chapters = []
    for entry in _toc_files(toc):
        path = root / entry
        if path.suffix == "":
            candidates = [path.with_suffix(s) for s in (".ipynb", ".md")]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise FileNotFoundError(f"_toc.yml lists {entry}, but neither {entry}.ipynb nor {entry}.md exists")
            path = found[0]
        elif not path.is_file():
            raise FileNotFoundError(f"_toc.yml lists {entry}, but {path} does not exist")
        if path.suffix == ".ipynb":
            chapters.append(path)
    return chapters


def _parse_value(value: str) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def execute_chapter(
    notebook: Path | str,
    output_dir: Path | str | None = None,
    parameters: dict[str, Any] | None = None,
    profile: str | None = None,
    records_dir: Path | str | None = None,
    kernel_name: str = "python3",
    progress: bool = False,
) -> ExecutedChapter:
    """Execute one chapter with papermill into ``output_dir`` (default ``_build/executed``).

    Args:
        notebook: the chapter.
        output_dir: folder of the executed copy (same file name).
        parameters: values injected after the ``parameters`` cell (strings are parsed as YAML).
        profile: shorthand for ``parameters["profile"]``.
        records_dir: where the chapter's run records go (``$NBSUPPORT_RECORDS`` for the kernel);
            default: ``$NBSUPPORT_RECORDS`` when set, else ``<output_dir>/records``.

    Raises:
        ChapterFailed: with the failing cell's error and traceback.
    """
    import papermill as pm

    nb = Path(notebook).resolve()
    if not nb.is_file():
        raise FileNotFoundError(f"no notebook at {nb}")
    root = repo_root(nb.parent)
    out_dir = Path(output_dir) if output_dir else root / "_build" / "executed" / nb.parent.name
    out_dir.mkdir(parents=True, exist_ok=True)
    rec_dir = Path(records_dir) if records_dir else Path(os.environ.get(RECORDS_ENV) or out_dir / "records")
    rec_dir.mkdir(parents=True, exist_ok=True)
    params = {k: _parse_value(v) if isinstance(v, str) else v for k, v in (parameters or {}).items()}
    if profile is not None:
        get_profile(profile)
        params["profile"] = profile
    known = pm.inspect_notebook(str(nb))
    unknown = sorted(set(params) - set(known))
    if unknown:                                     # before any work: a typo never runs the defaults silently
        raise ChapterFailed(f"{nb.name} has no parameter(s) {unknown}; its parameters: {', '.join(known)}")
    output = out_dir / nb.name
    before = {p: p.stat().st_mtime for p in rec_dir.glob("*.json")}
    old_env = os.environ.get(RECORDS_ENV)
    os.environ[RECORDS_ENV] = str(rec_dir.resolve())
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(nb), str(output), parameters=params, kernel_name=kernel_name,
                            cwd=str(nb.parent), progress_bar=progress, log_output=False)
    except pm.PapermillExecutionError as exc:
        tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(exc.traceback) if exc.traceback else "")
        raise ChapterFailed(f"{nb.name}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}\n{tb}\n"
                            f"(executed copy with the error: {output})") from None
    finally:
        if old_env is None:
            os.environ.pop(RECORDS_ENV, None)
        else:
            os.environ[RECORDS_ENV] = old_env
    seconds = time.perf_counter() - start
    records = sorted(p for p in rec_dir.glob("*.json") if before.get(p) != p.stat().st_mtime)
    return ExecutedChapter(nb, output, records, seconds)


def _library_digest(root: Path) -> str:
    """sha256 over what decides a chapter's outputs besides its own source: the library's code,
    its shipped weights, the dataset manifests and the package's pins."""
    h = hashlib.sha256()
    files = sorted([*(root / "nbsupport").rglob("*.py"), *(root / "nbsupport" / "weights").glob("*"),
                    *(root / "data_manifests").glob("*.yaml"), root / "pyproject.toml"])
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def reads_records(notebook: Path) -> bool:
    """Whether a chapter reads the other chapters' run records (it has a ``records_path`` parameter,
    as chapter 10 (results) does): its output then depends on those records, not only on its own source."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    return any("parameters" in c.metadata.get("tags", []) and re.search(r"^records_path\s*=", c.source, re.M)
               for c in nb.cells if c.cell_type == "code")


def chapter_key(notebook: Path, profile: str, library_digest: str, records_dir: Path | None = None) -> str:
    """The execution cache's key of one chapter: its source, the profile and the library digest, and,
    for a chapter that :func:`reads_records`, every other chapter's record in ``records_dir`` (a record
    is rewritten, with a new timestamp, whenever its chapter runs again)."""
    h = hashlib.sha256(notebook.read_bytes() + f"\0{profile}\0{library_digest}".encode())
    if records_dir is not None and reads_records(notebook):
        for rec in sorted(Path(records_dir).glob("*.json")):
            if not rec.name.startswith(notebook.stem):
                h.update(rec.name.encode() + b"\0" + rec.read_bytes() + b"\0")
    return h.hexdigest()


def _smoke_note() -> dict[str, Any]:
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/markdown": f"<small>⚠ {SMOKE_LABEL}</small>", "text/plain": SMOKE_LABEL}}


def _fold_parameters(defaults: str, injected: str) -> str:
    """The ``parameters`` cell's source with papermill's injected values written over its defaults,
    so that a page shows the values it ran with once, where the reader looks for them. Each
    ``name = value`` line of ``injected`` replaces the single-line assignment of ``name`` (its
    trailing comment kept); a name without one (or whose default spans lines) is appended, where
    it overrides the default as papermill's cell did. Lines are marked ``# this build``."""
    lines = defaults.splitlines()
    for line in injected.splitlines():
        m = re.match(r"^(\w+)\s*=\s*(.+?)\s*$", line)
        if not m:
            continue                                  # papermill's "# Parameters" header
        name, value = m.groups()
        pattern = re.compile(rf"^{re.escape(name)}\s*=\s*(.*?)(\s+#.*)?$")
        for i, old in enumerate(lines):
            hit = pattern.match(old)
            opened = sum(hit.group(1).count(c) for c in "([{") if hit else 0
            if hit and opened == sum(hit.group(1).count(c) for c in ")]}"):   # a one-line default
                if hit.group(1).strip() != value:
                    note = f"; {hit.group(2).strip()[1:].strip()}" if hit.group(2) else ""
                    lines[i] = f"{name} = {value}  # this build (default {hit.group(1).strip()}){note}"
                break
        else:
            lines.append(f"{name} = {value}  # this build")
    return "\n".join(lines)


def _prepare_page(src: Path, dst: Path, smoke: bool) -> None:
    """Copy an executed chapter for the website: papermill's injected values are written into the
    ``parameters`` cell (:func:`_fold_parameters`) and its injected cell is removed,
    and at a random-weights profile every figure and table gets the "smoke: not a result" label
    (except cells tagged ``diagram``, drawings, and ``benchmark``, committed measurements from
    ``benchmarks/results`` that do not depend on this build's profile)."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    params = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            if params is not None:
                params.source = _fold_parameters(params.source, cell.source)
        if smoke and cell.cell_type == "code" and not {"diagram", "benchmark"} & set(tags):
            outputs = []
            for out in cell.get("outputs", []):
                outputs.append(out)
                data = out.get("data", {})
                if "image/png" in data or "<table" in str(data.get("text/html", "")):
                    outputs.append(nbformat.from_dict(_smoke_note()))
            cell.outputs = outputs
    nbformat.write(nb, dst)


def local_mathjax() -> Path | None:
    """MathJax 2.7 shipped by the ``jupyter-server-mathjax`` package (the ``book`` extra), if installed.

    Copied into the site so that formulas are typeset without a network; without it the site loads
    MathJax from its CDN (and shows the TeX source offline).
    """
    try:
        import jupyter_server_mathjax  # type: ignore[import-not-found]
    except ImportError:
        return None
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    return static if (static / "MathJax.js").is_file() else None


def drop_stale_outputs(build_dir: Path, chapter_stems: Sequence[str], log: Callable[[str], None] = print) -> list[Path]:
    """Delete the run records and executed copies of chapters no longer in the book (a chapter renamed
    or removed), so the results chapter, which reads every record, shows only this book's chapters.

    Only files named like a chapter (``NN_slug...``) are touched. Returns what was deleted.
    """
    def chapter_of(path: Path) -> str:   # 03_benchmark-lora-s0.json, 03_benchmark.ipynb, .03_benchmark.key
        return path.name.lstrip(".").split("-")[0].split(".")[0]

    keep = set(chapter_stems)
    candidates = [*(build_dir / "records").glob("*.json"), *(build_dir / "executed").rglob("*.ipynb"),
                  *(build_dir / "executed").rglob(".*.key")]
    gone = [p for p in candidates if re.match(r"^\d\d_", chapter_of(p)) and chapter_of(p) not in keep]
    for path in gone:
        path.unlink()
    if gone:
        log(f"removed {len(gone)} record(s) and executed copies of chapters no longer in _toc.yml: "
            + ", ".join(sorted({chapter_of(p) for p in gone})))
    return gone


def build_book(
    profile: str = "smoke",
    root: Path | None = None,
    build_dir: Path | None = None,
    execute: bool = True,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> Path:
    """Execute every chapter in ``_toc.yml`` order, then build the HTML from the executed copies.

    A chapter whose source, profile and library (code, shipped weights, manifests) are unchanged
    since its last successful execution into this build folder is not executed again (``force``
    executes everything); a chapter that reads the others' run records (chapter 10, results) also runs again
    whenever one of them did.

    Returns:
        The folder holding ``index.html``.
    """
    get_profile(profile)
    root = (root or repo_root()).resolve()
    build_dir = (build_dir or root / "_build").resolve()
    executed = build_dir / "executed"
    stage = build_dir / "stage"
    chapters = toc_chapters(root)
    drop_stale_outputs(build_dir, [nb.stem for nb in chapters], log)
    if execute:
        digest = _library_digest(root)
        t_all = time.perf_counter()
        for i, nb in enumerate(chapters, 1):
            out_dir = executed / nb.parent.relative_to(root)
            stamp = out_dir / f".{nb.stem}.key"
            key = chapter_key(nb, profile, digest, build_dir / "records")
            if not force and (out_dir / nb.name).is_file() and stamp.is_file() and stamp.read_text() == key:
                log(f"[{i}/{len(chapters)}] {nb.relative_to(root)}: unchanged, executed copy reused")
                continue
            log(f"[{i}/{len(chapters)}] {nb.relative_to(root)} (profile={profile}) ...")
            stamp.unlink(missing_ok=True)
            res = execute_chapter(nb, out_dir, profile=profile, records_dir=build_dir / "records")
            stamp.write_text(key)
            log(f"[{i}/{len(chapters)}] {nb.relative_to(root)} done in {res.seconds:.1f} s "
                f"({(time.perf_counter() - t_all) / 60:.1f} min so far)")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_toc.yml", "README.md"):
        if (root / name).exists():
            shutil.copy2(root / name, stage / name)
    cfg = yaml.safe_load((root / "_config.yml").read_text(encoding="utf-8")) or {}
    cfg.setdefault("execute", {})["execute_notebooks"] = "off"
    repo = cfg.get("repository", {})
    sphinx = cfg.setdefault("sphinx", {})
    sphinx["extra_extensions"] = [*sphinx.get("extra_extensions", []), "sphinx.ext.extlinks"]
    sphinx.setdefault("config", {})["extlinks"] = {   # {src}`nbsupport/...` links a file of the repository
        "src": [f"{str(repo.get('url', '')).rstrip('/')}/blob/{repo.get('branch', 'main')}/%s", "%s"]}
    mathjax = local_mathjax()
    if mathjax is not None:                              # maths typeset offline too (else MathJax from its CDN)
        # served from the site's root (html_extra_path: copied as is, and not scanned for scripts, which
        # Jupyter Book does to html_static_path and would load every MathJax file on every page)
        sphinx["config"]["mathjax_path"] = "../mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"   # from _static
        sphinx["config"]["html_extra_path"] = ["_mathjax"]
        sphinx["config"]["mathjax2_config"] = {      # MathJax 2: MyST marks the page ignore, the maths "math"
            "tex2jax": {"processClass": "math|output_area|tex2jax_process", "ignoreClass": "tex2jax_ignore|mathjax_ignore",
                        "inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]], "processEscapes": True},
            "HTML-CSS": {"availableFonts": [], "preferredFont": None, "webFont": "STIX-Web", "imageFont": None}}
    (stage / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    for folder in ("book", "_static"):                   # pages, and the site's CSS
        if (root / folder).exists():
            shutil.copytree(root / folder, stage / folder)
    if mathjax is not None:   # outside _static: Jupyter Book would add every .js under _static to every page
        shutil.copytree(mathjax, stage / "_mathjax" / "mathjax", ignore=shutil.ignore_patterns("*.eot", "*.otf", "*.svg"))
    for nb in chapters:
        rel = nb.relative_to(root)
        src = executed / rel.parent / rel.name
        if not src.exists():
            raise FileNotFoundError(f"{rel} has no executed copy in {executed}: run without --no-execute")
        (stage / rel.parent).mkdir(parents=True, exist_ok=True)
        _prepare_page(src, stage / rel, smoke=get_profile(profile).random_weights)
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(stage), "--path-output", str(build_dir)]
    if (build_dir / "_build").exists():      # a fresh site (seconds): Sphinx would keep the sidebar of unchanged
        shutil.rmtree(build_dir / "_build")   # pages, and the pages of chapters no longer in the toc, from before
    log("building HTML: " + " ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"jupyter-book build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n"
                           f"{proc.stderr[-4000:]}")
    html = build_dir / "_build" / "html"
    log(f"website built in {time.perf_counter() - t0:.1f} s: {html / 'index.html'}")
    return html
