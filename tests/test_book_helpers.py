"""The book's formatting helper and diagrams."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from nbsupport.book import diagrams, fmt

matplotlib.use("Agg")


@pytest.mark.parametrize("x, digits, expected", [
    (0.78412, 3, "0.784"), (1234.5, 3, "1,234"), (85_802_501, 3, "85,802,501"), (0.0123456, 3, "0.0123"),
    (3e-6, 3, "3.00e-06"), (100.004, 3, "100"), (0, 3, "0"), (-0.5, 2, "-0.50"), (float("nan"), 3, "–"),
    (None, 3, "–"), (np.float32(0.25), 2, "0.25"),
])
def test_sig(x, digits, expected):
    assert fmt.sig(x, digits) == expected


def test_mean_std_rounds_the_mean_to_the_std():
    assert fmt.mean_std(0.78412, 0.0104) == "0.784 ± 0.010"
    assert fmt.mean_std(12.345, 1.5) == "12.3 ± 1.5"
    assert fmt.mean_std(0.7, float("nan")) == "0.700"             # one seed: no spread to show
    assert fmt.mean_std(float("nan"), 0.1) == "–"


def test_metric_name_is_the_short_display_name():
    assert fmt.metric_name("test_kappa") == "Kappa" and fmt.metric_name("test_dice_x") == "test dice x"


def test_percent_and_count():
    assert fmt.percent(0.4912) == "0.49 %" and fmt.percent(0.25, scale=100) == "25 %"
    assert fmt.percent(0.9965, scale=100) == "99.7 %" and fmt.percent(100.004) == "100 %"   # not rounded up to 100
    assert fmt.mean_std(0.3441, 0.0051) == "0.344 ± 0.005" and fmt.mean_std(0.5, 0.0002) == "0.50000 ± 0.00020"
    assert fmt.count(85802501.0) == "85,802,501" and fmt.count(None) == "–"


def test_signed_gaps_never_show_a_negative_zero():
    assert [fmt.signed(v) for v in (0.0123, -0.156, -0.00031, 0.00049, -0.00001, 0.0)] == \
        ["+0.012", "-0.156", "-0.0003", "+0.0005", "0.000", "0.000"]
    assert fmt.interval(-0.00012, 0.0011) == "[-0.0001, +0.0011]"      # one precision for both ends
    assert fmt.interval(0.0, 0.0381) == "[0.000, +0.038]" and fmt.interval(-0.02, 0.03) == "[-0.020, +0.030]"


def test_size_picks_a_readable_unit():
    assert [fmt.size(b) for b in (900, 15_520, 1_195_376, 343_214_080, 6.4 * 2**30, None)] == \
        ["900 B", "15.2 KB", "1.14 MB", "327 MB", "6.40 GB", "–"]
    assert fmt.size(1023 * 1024) == "0.999 MB"          # not "1,023 KB"
    shown = fmt.table(pd.DataFrame({"checkpoint_bytes": [15_520, 343_214_080]}),
                      sizes=["checkpoint_bytes"]).data
    assert list(shown.columns) == ["checkpoint"] and list(shown["checkpoint"]) == ["15.2 KB", "327 MB"]


def test_table_formats_every_cell_and_labels_columns():
    df = pd.DataFrame({"test_kappa": [0.784, 0.71], "test_kappa_std": [0.0104, math.nan],
                       "trainable": [85_802_501, 3_845], "trainable_pct": [100.004, 0.0045], "lr": [1.5e-3, 3e-4],
                       "note": ["a", None]}, index=pd.Index(["Full", "DVPT"], name="label"))
    out = fmt.table(df, mean_std=["test_kappa"], counts=["trainable"], percents=["trainable_pct"]).data
    assert list(out.columns) == ["Kappa (test)", "trainable params", "trainable %", "learning rate", "note"]
    assert out.columns.name == "method" and out.index.name is None     # one header row: the index's name sits in it
    assert out.loc["Full"].tolist() == ["0.784 ± 0.010", "85,802,501", "100 %", "1.5e-03", "a"]
    assert out.loc["DVPT"].tolist() == ["0.710", "3,845", "0.0045 %", "3.0e-04", "–"]
    assert "nan" not in fmt.table(df).to_html().lower()
    seeds = pd.DataFrame({"seeds": [3.0, 2.0]})                   # a mean over seeds makes the count a float
    assert fmt.table(seeds).data["seeds"].tolist() == ["3", "2"]
    assert fmt.table(pd.DataFrame({"n": [12, 1500]})).data["n"].tolist() == ["12", "1,500"]   # an int column is a count
    assert fmt.table(pd.DataFrame({"fits": [True, False]})).data["fits"].tolist() == ["✓", "✗"]
    long = fmt.table(pd.DataFrame({"licence": ["Kaggle competition rules (non-commercial research)"], "n": [3]})).to_html()
    assert "white-space: normal" in long                          # long text wraps in its cell
    twice = pd.DataFrame({"weights": ["pretrained:pocket-fundus-vit@sha256:2b00c291", "random"]}, index=["01", "01"])
    assert "white-space: normal" in fmt.table(twice).to_html()     # a repeated index (a chapter with two models)


def test_a_mean_std_column_has_one_number_of_decimals():
    df = pd.DataFrame({"k": [0.7495, 0.705, 0.767, 0.6], "k_std": [0.0068, 0.044, 0.011, math.nan]})
    assert fmt.table(df, mean_std=["k"]).data["k"].tolist() == ["0.750 ± 0.007", "0.705 ± 0.044", "0.767 ± 0.011", "0.600"]
    kid = pd.DataFrame({"kid": [0.80, 0.87, 0.004, 0.0], "kid_std": [0.15, 0.14, 0.055, 0.12]})
    assert fmt.table(kid, mean_std=["kid"]).data.iloc[:, 0].tolist() == [   # a small mean is not 0.00
        "0.80 ± 0.15", "0.87 ± 0.14", "0.004 ± 0.055", "0.00 ± 0.12"]
    quiet = pd.DataFrame({"k": [0.78, 0.70, 0.781], "k_std": [0.15, 0.12, 0.004]})
    assert fmt.table(quiet, mean_std=["k"]).data["k"].tolist() == [        # a small std is not 0.00 either
        "0.78 ± 0.15", "0.70 ± 0.12", "0.781 ± 0.004"]
    head = fmt.table(df.rename_axis("m")).to_html().split("<thead>")[1].split("</thead>")[0]
    assert head.count("<tr>") == 1 and ">m</th>" in head                  # the index's name in the one header row


def test_table_keeps_grouped_columns_and_labels_each_level():
    df = pd.DataFrame({("step_ms", "DVPT"): [30.6], ("step_ms", "LoRA"): [20.4], ("MFU_%", "DVPT"): [18.9]})
    out = fmt.table(df).data
    assert list(out.columns) == [("step (ms)", "DVPT"), ("step (ms)", "LoRA"), ("MFU %", "DVPT")]
    assert out.iloc[0].tolist() == ["30.6", "20.4", "18.9"]


def test_table_names_a_missing_column():
    with pytest.raises(KeyError, match="no column.*'kappa'"):
        fmt.table(pd.DataFrame({"a": [1]}), columns=["kappa"])


@pytest.mark.parametrize("name, words", [
    ("dvpt_module", ["prompts", "cross-attention", "gate", "bottleneck"]),
    ("vit_block_methods", ["LoRA", "VPT-deep", "AdaptFormer", "DVPT", "BitFit", "SSF", "Linear probe"]),
    ("sd_pipeline", ["VAE encoder", "UNet", "CLIP text encoder", "DDIM", "VAE decoder"]),
    ("evaluation_protocol", ["FID", "alignment classifier", "usefulness", "noise floor"]),
])
def test_diagrams_draw_their_parts(name, words):
    fig = getattr(diagrams, name)()
    text = " ".join(t.get_text() for t in fig.axes[0].texts)
    for w in words:
        assert w in text, f"{name} lacks {w!r}"
    assert len(fig.axes[0].patches) >= 6
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("name", diagrams.__all__)
def test_diagram_text_stays_inside_its_box(name):
    from matplotlib.patches import FancyBboxPatch

    fig = getattr(diagrams, name)()
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    checked = 0
    for t in ax.texts:
        x, y = t.get_position()
        for b in boxes:
            if abs(b.get_x() + b.get_width() / 2 - x) < 1e-9 and abs(b.get_y() + b.get_height() / 2 - y) < 1e-9:
                inner = t.get_window_extent(renderer)
                outer = b.get_window_extent(renderer)
                assert outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1, \
                    f"{name}: {t.get_text()!r} spills out of its box"
                checked += 1
    assert checked >= 6
    matplotlib.pyplot.close(fig)


def test_site_check_finds_each_kind_of_problem(tmp_path):
    from nbsupport.book.site import check_site

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "index.html").write_text('<a href="notebooks/a.html#x">a</a> <a href="https://x.org/y">ext</a>')
    (tmp_path / "notebooks" / "a.html").write_text("<p>fine</p><img src='f.png'><script>var nan = 1;</script>")
    (tmp_path / "notebooks" / "b.html").write_text(
        "<pre>Traceback (most recent call last):</pre><td>nan</td><p>/home/me/.cache/x</p><a href='../gone.html'>x</a>"
        .replace("'", '"'))
    problems = check_site(tmp_path, ["notebooks/a.html", "notebooks/b.html", "notebooks/c.html"], ["/home/me/.cache"])
    text = "\n".join(problems)
    assert "notebooks/c.html: missing" in text and "notebooks/b.html: no figure" in text
    assert "b.html: shows a traceback" in text and "b.html: raw nan" in text
    assert "b.html: shows the build machine's path /home/me/.cache" in text and "b.html: broken link ../gone.html" in text
    assert not [p for p in problems if p.startswith(("index.html", "notebooks/a.html"))]   # nan in a script is not shown


def test_screenshots_skip_redirect_pages(tmp_path):
    """A meta-refresh page (the site's index.html) hangs headless Chromium: it is skipped; every
    other page is shot with the arguments that make Chromium finish."""
    from nbsupport.book.site import screenshot_pages

    site = tmp_path / "html"
    (site / "book").mkdir(parents=True)
    (site / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=book/intro.html" />')
    (site / "book" / "intro.html").write_text("<p>intro</p>")
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "chromium"          # writes the PNG it is asked for and logs its arguments
    fake.write_text("#!/bin/sh\necho \"$@\" >> %s\nfor a in \"$@\"; do case $a in --screenshot=*) "
                    ": > \"${a#--screenshot=}\";; esac; done\n" % calls)
    fake.chmod(0o755)
    shots = screenshot_pages(site, tmp_path / "shots", chromium=str(fake))
    assert [p.name for p in shots] == ["book_intro.png"] and shots[0].is_file()
    assert "--virtual-time-budget=10000" in calls.read_text() and "index.html" not in calls.read_text()


def test_site_check_wants_local_mathjax_when_the_site_ships_it(tmp_path):
    from nbsupport.book.site import check_site

    (tmp_path / "index.html").write_text("<p>home</p>")
    (tmp_path / "f.png").write_bytes(b"")
    (tmp_path / "m.html").write_text('<img src="f.png"><span class="math">\\(x\\)</span>'
                                     '<script src="https://cdn.example/tex-chtml.js"></script>')
    (tmp_path / "n.html").write_text('<img src="f.png"><span class="math">\\(x\\)</span>')
    assert check_site(tmp_path, ["m.html"]) == ["n.html: has maths but loads no MathJax"]
    (tmp_path / "mathjax").mkdir(parents=True)
    (tmp_path / "mathjax" / "MathJax.js").write_text("")
    assert "m.html: the site ships MathJax (mathjax/) but the page loads https://cdn.example/tex-chtml.js" in \
        check_site(tmp_path, ["m.html"])
    (tmp_path / "m.html").write_text('<img src="f.png"><span class="math">x</span><script src="_static/../mathjax/MathJax.js'
                                     '?config=TeX"></script><script src="mathjax/extensions/a.js"></script>')
    assert "loads MathJax files 2 times" in "\n".join(check_site(tmp_path, ["m.html"]))


def test_the_repository_url_is_one_setting():
    import tomllib
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parent.parent
    url = yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"]
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["urls"]["Homepage"] == url
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        text = nb.read_text()
        assert "REPO_URL" not in text or f'REPO_URL = \\"{url}\\"' in text, nb.name


def test_smoke_pages_label_results_but_not_drawings_or_committed_benchmarks(tmp_path):
    import nbformat

    from nbsupport.book.runner import SMOKE_LABEL, _prepare_page

    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", "text/plain": "fig"}}
    nb = nbformat.v4.new_notebook()
    for tags in ([], ["diagram"], ["benchmark"]):
        cell = nbformat.v4.new_code_cell("plot()", metadata={"tags": list(tags)})
        cell.outputs = [nbformat.from_dict(png)]
        nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "in.ipynb")
    _prepare_page(tmp_path / "in.ipynb", tmp_path / "out.ipynb", smoke=True)
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    labelled = [any(SMOKE_LABEL in str(o.get("data", {})) for o in c.outputs) for c in cells]
    assert labelled == [True, False, False]


def test_the_results_chapter_runs_again_when_another_chapter_did(tmp_path):
    """The execution cache: chapter 10 reads the other chapters' records, so its key follows them;
    a chapter that reads none keeps its key whatever the records are."""
    from nbsupport.book.runner import chapter_key, reads_records
    from nbsupport.core.paths import repo_root

    ROOT = repo_root()
    results, bench = ROOT / "notebooks" / "10_results.ipynb", ROOT / "notebooks" / "03_benchmark.ipynb"
    assert reads_records(results) and not reads_records(bench)
    rec = tmp_path / "records"
    rec.mkdir()
    (rec / "03_benchmark-fundus.json").write_text('{"created": "1"}')
    (rec / "10_results-all.json").write_text('{"created": "1"}')
    k9, k3 = chapter_key(results, "cpu", "lib", rec), chapter_key(bench, "cpu", "lib", rec)
    (rec / "10_results-all.json").write_text('{"created": "2"}')          # its own record: no change
    assert chapter_key(results, "cpu", "lib", rec) == k9
    (rec / "03_benchmark-fundus.json").write_text('{"created": "2"}')     # chapter 3 ran again
    assert chapter_key(results, "cpu", "lib", rec) != k9
    assert chapter_key(bench, "cpu", "lib", rec) == k3
    assert chapter_key(bench, "smoke", "lib", rec) != k3 and chapter_key(bench, "cpu", "lib2", rec) != k3


def test_table_formats_a_float_index():
    df = pd.DataFrame({"guidance": [1.0, 7.5], "fid": [31.509, 39.2031]}).set_index("guidance")
    data = fmt.table(df).data
    assert list(data.index) == ["1.00", "7.50"] and data.columns.name == "guidance"
    assert list(data["FID"]) == ["31.5", "39.2"]
    assert list(fmt.table(df.reset_index().set_index("fid")[["guidance"]], digits=2).data.index) == ["32", "39"]


def test_a_renamed_chapter_leaves_no_stale_records(tmp_path):
    from nbsupport.book.runner import drop_stale_outputs

    (tmp_path / "records").mkdir()
    (tmp_path / "executed" / "notebooks").mkdir(parents=True)
    old = [tmp_path / "records" / "10_segmentation-lora-fundus-s0.json", tmp_path / "executed" / "notebooks" / "10_segmentation.ipynb",
           tmp_path / "executed" / "notebooks" / ".10_segmentation.key"]
    kept = [tmp_path / "records" / "09_segmentation-lora-fundus-s0.json", tmp_path / "records" / "notes.json",
            tmp_path / "executed" / "notebooks" / "09_segmentation.ipynb"]
    for p in old + kept:
        p.write_text("{}")
    said = []
    assert sorted(drop_stale_outputs(tmp_path, ["09_segmentation", "10_results"], said.append)) == sorted(old)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in old)
    assert "10_segmentation" in said[0]


def test_a_method_keeps_its_colour_across_chapters():
    from nbsupport.book import viz
    from nbsupport.vit.methods import METHODS

    colours = viz.method_colours()
    assert set(colours) == {m.label for m in METHODS.values()} | {"Decoder only"}
    assert colours["Decoder only"] == colours["Linear probe"] and len({colours[m.label] for m in METHODS.values()}) == len(METHODS)


def test_comparison_grid_wraps_many_columns_into_wide_blocks():
    import matplotlib.pyplot as plt

    from nbsupport.book import viz

    matplotlib.use("Agg")
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    cols = {f"method {k}": [img + k, img, img] for k in range(13)}
    fig = viz.comparison_grid(cols, ["grade 0", "grade 2", "grade 4"], max_cols=7)
    grid = np.array(fig.axes).reshape(6, 7)                  # two blocks of three rows, seven columns
    assert grid[0, 0].get_title() == "method 0" and grid[3, 0].get_title() == "method 7"
    assert grid[1, 0].get_ylabel() == "grade 2" and grid[4, 0].get_ylabel() == "grade 2"
    assert grid[3, 6].axison is False and grid[0, 6].images                # the last block has six columns
    assert fig.get_figwidth() > fig.get_figheight()
    within = grid[1, 0].get_position().y0 - grid[2, 0].get_position().y1      # between rows of a block
    between = grid[2, 0].get_position().y0 - grid[3, 0].get_position().y1     # between the blocks
    assert between > within + 0.02                                            # the blocks read as separate
    plt.close(fig)
    fig = viz.comparison_grid(cols, ["grade 0", "grade 2", "grade 4"], max_cols=7, keep=2)
    grid = np.array(fig.axes).reshape(9, 7)                  # 11 methods, 5 per block beside the 2 kept
    assert [grid[3, j].get_title() for j in range(3)] == ["method 0", "method 1", "method 7"]
    assert grid[6, 2].get_title() == "method 12" and grid[6, 3].axison is False
    plt.close(fig)
    with pytest.raises(ValueError, match="keep=7"):
        viz.comparison_grid(cols, ["grade 0", "grade 2", "grade 4"], max_cols=7, keep=7)
    with pytest.raises(ValueError, match="'method 1' has 2 images for 3 row labels"):
        viz.comparison_grid({"method 0": [img] * 3, "method 1": [img] * 2}, ["a", "b", "c"])


def test_heat_colourbar_matches_the_overlay_scale():
    import matplotlib.pyplot as plt

    from nbsupport.book import viz

    matplotlib.use("Agg")
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    heat = np.array([[0.2, 0.2], [0.2, 5.0]])               # any range: the overlay scales min..max to 0..1
    over = viz.heatmap_overlay(image, heat, alpha=1.0)
    fig = viz.comparison_grid({"a": [over], "b": [over]}, ["row"])
    bar = viz.heat_colourbar(fig, "attention")
    cmap, norm = bar.mappable.get_cmap(), bar.mappable.norm
    hottest = (np.array(cmap(norm(1.0))[:3]) * 255).astype(np.uint8)
    coldest = (np.array(cmap(norm(0.0))[:3]) * 255).astype(np.uint8)
    assert np.abs(over[-1, -1].astype(int) - hottest).max() <= 1 and np.abs(over[0, 0].astype(int) - coldest).max() <= 1
    assert [t.get_text() for t in bar.ax.get_yticklabels()] == ["low", "high"] and bar.ax.get_ylabel() == "attention"
    plt.close(fig)


def test_heatmap_overlay_on_a_fixed_scale_keeps_a_flat_map_flat():
    from nbsupport.book import viz

    image = np.zeros((16, 16, 3), dtype=np.uint8)
    flat = np.full((4, 4), 1 / 16) + np.random.default_rng(0).normal(0, 1e-4, (4, 4))  # 1.00x peak
    own = viz.heatmap_overlay(image, flat, alpha=1.0)                # its own min..max: a bright spot
    fixed = viz.heatmap_overlay(image, flat, alpha=1.0, vmin=0, vmax=3 / 16)
    spread = lambda img: np.ptp(img.reshape(-1, 3).astype(int), axis=0).max()   # across pixels
    assert spread(own) > 100                                          # noise stretched to full range
    assert spread(fixed) <= 3                                         # one even colour
    peaked = np.full((4, 4), 1 / 32); peaked[0, 0] = 1 / 2             # 8x its share: clipped to the top
    top = viz.heatmap_overlay(image, peaked, alpha=1.0, vmin=0, vmax=3 / 16)
    assert np.array_equal(top[0, 0], viz.heatmap_overlay(image, np.eye(2), alpha=1.0)[0, 0])
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    fig = viz.comparison_grid({"a": [fixed]}, ["row"])
    bar = viz.heat_colourbar(fig, "attention", ticks={0: "0", 1 / 3: "flat", 1: "3x or more"})
    assert [t.get_text() for t in bar.ax.get_yticklabels()] == ["0", "flat", "3x or more"]
    plt.close(fig)


def test_mask_colour_key_names_the_overlay_colours_in_order():
    from nbsupport.book import viz

    assert len(viz.MASK_COLOUR_NAMES) == len(viz.MASK_COLOURS)
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    masks = np.zeros((2, 4, 4), dtype=bool); masks[0, 0, 0] = masks[1, 3, 3] = True
    over = viz.mask_overlay(image, masks, alpha=1.0)
    assert tuple(over[0, 0]) == viz.MASK_COLOURS[0] and tuple(over[3, 3]) == viz.MASK_COLOURS[1]
    assert viz.mask_colour_key(["optic disc", "exudates"]) == "optic disc: cyan / exudates: yellow"


def test_image_grid_leaves_room_for_titles():
    import matplotlib.pyplot as plt

    from nbsupport.book import viz

    matplotlib.use("Agg")
    imgs = [np.zeros((64, 64, 3), dtype=np.uint8)] * 8           # chapter 9's masks figure
    for titles in ([f"image {i}" for i in range(8)], [f"method {i}\nasked 2, judged 3 (0.71)" for i in range(8)]):
        fig = viz.image_grid(imgs, titles, ncols=4, size=2.2, suptitle="a / legend / line")
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        title = fig.axes[4].title.get_window_extent(r)          # second row's first title
        above = fig.axes[0].get_window_extent(r)                # the image above it
        assert title.y1 <= above.y0 + 1, titles[0]
        plt.close(fig)


def test_a_page_shows_the_parameters_it_ran_with_once(tmp_path):
    import nbformat

    from nbsupport.book.runner import _prepare_page

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('profile = "smoke"        # smoke | cpu | gpu | full\n'
                                          'seeds = None             # None: the profile\'s\n'
                                          '                         # a continuation comment\n'
                                          'seed = 0\n'
                                          'names = ["a",\n         "b"]',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('# Parameters\nprofile = "cpu"\nseed = 0\nepochs = 3\nnames = ["c"]\n',
                                          metadata={"tags": ["injected-parameters"]})]
    nbformat.write(nb, tmp_path / "in.ipynb")
    _prepare_page(tmp_path / "in.ipynb", tmp_path / "out.ipynb", smoke=False)
    params, injected = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert params.source.splitlines() == [
        'profile = "cpu"  # this build (default "smoke"); smoke | cpu | gpu | full',
        "seeds = None             # None: the profile's",
        "                         # a continuation comment",
        "seed = 0",                                             # the default: left as it was
        'names = ["a",', '         "b"]',
        "epochs = 3  # this build",                             # not among the defaults: appended
        'names = ["c"]  # this build']                          # a default over two lines: overridden below it
    assert "remove-cell" in injected.metadata["tags"]


def test_yardsticks_judge_a_gap_both_ways():
    from nbsupport.book.tables import YARDSTICK_LABELS, yardsticks
    from nbsupport.vit.experiment import difference

    beyond, within = difference(0.80, 0.005, 0.77, 0.005), difference(0.78, 0.01, 0.77, 0.01)
    clear = yardsticks(beyond, np.linspace(0.01, 0.05, 2001))           # all resamples above 0
    assert clear["vs_seeds"] == "beyond" and clear["test_sets_vs_0"] == "clear of 0" and clear["both"]
    assert clear["test_sets"] == "[+0.011, +0.049]"
    assert clear["interval"] == pytest.approx((0.011, 0.049))
    spans = yardsticks(beyond, np.linspace(-0.01, 0.03, 2001))
    assert spans["test_sets_vs_0"] == "spans 0" and not spans["both"] and spans["test_sets"] == "[-0.009, +0.029]"
    assert yardsticks(difference(0.8, float("nan"), 0.7, float("nan")),
                      np.linspace(0.01, 0.05, 11))["vs_seeds"] == "one seed"
    touch = yardsticks(beyond, np.r_[np.zeros(60), np.linspace(0.01, 0.05, 940)])   # lower end exactly 0
    assert touch["test_sets_vs_0"] == "touches 0" and not touch["both"] and touch["test_sets"].startswith("[0.000,")
    assert not yardsticks(within, np.linspace(0.01, 0.05, 11))["both"]
    # ch03's BitFit against the probe: 0.0196 against a threshold of 0.0184, beyond it by under a tenth:
    # chapter 3's line calls it not separated, and so must the table and the "both" verdict
    barely = yardsticks(difference(0.769, 0.0065, 0.7494, 0.0065), np.linspace(0.01, 0.05, 2001))
    assert barely["vs_seeds"] == "barely beyond" and not barely["both"]
    assert set(YARDSTICK_LABELS) <= set(clear)


def test_the_profiles_table_says_whose_weights_each_profile_uses():
    from nbsupport.book.tables import profiles_table

    weights = profiles_table()["weights"].to_dict()
    assert weights["smoke"] == "tiny, random" and weights["cpu"] == "pocket, pretrained by this book"
    assert weights["gpu"] == weights["full"] == "pretrained (hub)"
