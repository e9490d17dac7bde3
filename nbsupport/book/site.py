"""Checks of the built website, and screenshots of every page for a look before a release.

``check_site`` is what the test suite runs on the smoke build: every chapter has a page with at
least one figure, no page shows a traceback, an absolute path of the build machine or a raw ``nan``,
and every internal link resolves. ``screenshot_pages`` drives a headless Chromium (Debian's
``chromium`` package works offline) over every page.

    python -m nbsupport site _build/_build/html --screenshots shots/
"""

from __future__ import annotations

import html as html_lib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["check_site", "page_text", "screenshot_pages", "find_chromium"]

_HREF = re.compile(r'(?:href|src)="([^"]+)"')
_REDIRECT = re.compile(r'<meta[^>]+http-equiv="refresh"', re.IGNORECASE)
_NAN = re.compile(r"(?<![\w.-])(?:nan|NaN)(?![\w-])")


def page_text(page_html: str) -> str:
    """The visible text of a page: scripts, styles and tags removed, entities decoded."""
    t = re.sub(r"<(script|style)\b.*?</\1>", " ", page_html, flags=re.S | re.I)
    t = re.sub(r"<[^>]+>", " ", t)
    return html_lib.unescape(t)


def _internal_targets(page: Path, page_html: str) -> Iterable[tuple[str, Path]]:
    for ref in _HREF.findall(page_html):
        if re.match(r"^[a-z][a-z0-9+.-]*:", ref, re.I) or ref.startswith(("#", "//")):
            continue                                         # external, mailto:, data:, or same page
        path = ref.split("#", 1)[0].split("?", 1)[0]
        if path:
            yield ref, (page.parent / path).resolve()


def check_site(html_dir: str | Path, chapters: Sequence[str], forbidden_paths: Sequence[str | Path] = ()) -> list[str]:
    """Problems of a built site (an empty list when it is fine).

    Args:
        html_dir: the folder holding ``index.html``.
        chapters: chapter pages relative to it, e.g. ``"notebooks/03_benchmark.html"``.
        forbidden_paths: absolute paths of the build machine that must not appear on any page
            (the build folder, the cache, the home folder, the checkout).
    """
    root = Path(html_dir)
    problems: list[str] = []
    if not (root / "index.html").is_file():
        return [f"{root}: no index.html (was the book built?)"]
    for rel in chapters:
        page = root / rel
        if not page.is_file():
            problems.append(f"{rel}: missing")
        elif "<img" not in page.read_text(encoding="utf-8"):
            problems.append(f"{rel}: no figure")
    forbidden = [str(p).rstrip("/") for p in forbidden_paths if str(p).strip("/")]
    for page in sorted(root.rglob("*.html")):
        rel = page.relative_to(root)
        if rel.parts[0] in ("_static", "_sources", "genindex.html", "search.html"):
            continue
        raw = page.read_text(encoding="utf-8")
        text = page_text(raw)
        if "Traceback (most recent call last)" in text or re.search(r"\w+Error: .*\n.*Traceback", text):
            problems.append(f"{rel}: shows a traceback")
        for p in forbidden:
            if p in text:
                problems.append(f"{rel}: shows the build machine's path {p}")
        outputs = page_text(re.sub(r'<div class="highlight-ipython3.*?</pre>', " ", raw, flags=re.S))   # not code
        for m in _NAN.finditer(outputs):
            context = outputs[max(0, m.start() - 40):m.end() + 40].replace("\n", " ")
            problems.append(f"{rel}: raw nan: ...{context.strip()}...")
            break
        for ref, target in _internal_targets(page, raw):
            if not target.exists():
                problems.append(f"{rel}: broken link {ref}")
        if 'class="math' in raw:
            scripts = re.findall(r'<script[^>]+src="([^"]*(?:MathJax|mathjax|tex-[a-z]+)[^"]*)"', raw)
            if not scripts:
                problems.append(f"{rel}: has maths but loads no MathJax")
            elif (root / "mathjax" / "MathJax.js").is_file() and not any(u.split("?")[0].endswith("/mathjax/MathJax.js")
                                                                          and "://" not in u for u in scripts):
                problems.append(f"{rel}: the site ships MathJax (mathjax/) but the page loads {scripts[0]}")
            elif len(scripts) > 1:
                problems.append(f"{rel}: loads MathJax files {len(scripts)} times ({scripts[:3]}...)")
    return problems


def find_chromium() -> str | None:
    """The first headless-capable Chromium on the PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot_pages(html_dir: str | Path, out_dir: str | Path, width: int = 1280, height: int = 6000,
                     chromium: str | None = None) -> list[Path]:
    """A full-width PNG of every page (``out_dir/<page path with _>.png``); returns the files.
    Redirect-only pages (the site's ``index.html``) are skipped: their target is shot as itself.

    Raises:
        FileNotFoundError: no Chromium installed (``apt install chromium`` works offline from a mirror).
        RuntimeError: Chromium did not finish a page within two minutes (the page is named).
    """
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium found: install Debian's 'chromium' package, or pass chromium=PATH")
    root, out = Path(html_dir).resolve(), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    for page in sorted(root.rglob("*.html")):
        rel = page.relative_to(root)
        if rel.parts[0].startswith("_") or rel.name in ("genindex.html", "search.html"):
            continue
        if _REDIRECT.search(page.read_text(encoding="utf-8", errors="replace")[:2000]):
            continue                   # headless Chromium waits forever on a meta refresh
        png = out / (str(rel.with_suffix("")).replace("/", "_") + ".png")
        try:
            subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--virtual-time-budget=10000", f"--window-size={width},{height}",
                            f"--screenshot={png.resolve()}", page.as_uri()],
                           check=True, capture_output=True, timeout=120)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"chromium took over 120 s to screenshot {page}; open it in a browser to see "
                               "what it waits for") from exc
        shots.append(png)
    return shots
