"""Numbers and tables for people: significant digits, thousands separators, percentages, labels.

Every table a chapter shows goes through :func:`table`, so the book prints ``0.784 ± 0.010``
rather than ``0.78412`` and ``0.0104`` in two columns (one number of decimals per column), ``85,802,501`` rather than ``85802501``,
``0.49 %`` rather than ``0.4912``, ``–`` rather than ``NaN``, and ``Kappa (test)`` rather than
``test_kappa``.

>>> fmt.sig(0.0123456)
'0.0123'
>>> fmt.table(summary, mean_std=["test_kappa"], columns=["test_kappa", "trainable", "trainable_pct"])
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["LABELS", "sig", "count", "percent", "size", "signed", "interval", "mean_std", "metric_name", "table"]

#: Display names of the run records' keys (a table's columns are renamed with these).
LABELS: dict[str, str] = {
    "test_kappa": "Kappa (test)", "test_accuracy": "accuracy (test)", "test_auc": "AUC (test)",
    "test_f1": "macro F1 (test)", "val_kappa": "Kappa (val)", "kappa": "Kappa",
    "trainable": "trainable params", "trainable_pct": "trainable %", "added": "added params",
    "checkpoint_bytes": "checkpoint", "step_ms": "step (ms)",
    "step_time_s": "step (s)", "peak_GiB": "peak memory (GiB)", "images_per_s": "images/s", "MFU_%": "MFU %",
    "lr": "learning rate", "learning_rates": "learning rates", "seeds": "seeds", "method": "method",
    "fid": "FID", "fid_std": "FID std", "kid": "KID", "kid_std": "KID std", "vendi": "Vendi", "alignment": "alignment",
    "test_score": "test score", "fraction": "labelled fraction", "generator": "generator", "classifier": "classifier",
    "label": "method", "method_label": "method", "final_loss": "final loss", "first_loss": "first loss", "train_minutes": "training (min)",
}


def _missing(x: Any) -> bool:
    try:
        return x is None or (isinstance(x, float) and math.isnan(x)) or bool(x != x)
    except (TypeError, ValueError):
        return False


def sig(x: Any, digits: int = 3, dash: str = "–") -> str:
    """``x`` with ``digits`` significant digits, thousands separated, no exponent above 1e-4.

    ``sig(0.78412) == "0.784"``, ``sig(1234.5) == "1,234"``, ``sig(3e-6) == "3.00e-06"``, NaN/None -> ``dash``.
    """
    if _missing(x):
        return dash
    if isinstance(x, str):
        return x
    x = float(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= 7:
        return f"{x:,.0f}"
    if mag < -4:
        return f"{x:.{max(digits - 1, 0)}e}"
    decimals = max(digits - 1 - mag, 0)
    return f"{round(x, decimals):,.{decimals}f}"


def metric_name(key: str) -> str:
    """A score's short display name: ``metric_name("test_kappa") == "Kappa"`` (the test split is implied)."""
    return LABELS.get(key, key.replace("_", " ")).replace(" (test)", "")


def _text(x: Any) -> str:
    """A text cell: yes/no as ``✓``/``✗`` (not ``True``/``False``), a missing value as ``–``."""
    if type(x).__name__ in ("bool", "bool_"):                          # Python's and numpy's booleans
        return "✓" if x else "✗"
    return "–" if _missing(x) else str(x)


def count(x: Any, dash: str = "–") -> str:
    """An integer with thousands separators: ``85,802,501``."""
    return dash if _missing(x) else f"{int(round(float(x))):,}"


def percent(x: Any, digits: int = 2, scale: float = 1.0, dash: str = "–") -> str:
    """``x * scale`` as a percentage with ``digits`` significant digits (``percent(0.4912) == "0.49 %"``;
    ``percent(0.25, scale=100) == "25 %"``)."""
    if _missing(x):
        return dash
    v = float(x) * scale
    while digits < 5 and ((0 < v < 100 and float(sig(v, digits).replace(",", "")) == 100)
                          or (v > 0 and float(sig(v, digits).replace(",", "")) == 0)):
        digits += 1                                   # 99.65 % is not 100 %
    return f"{sig(v, digits)} %"


def signed(x: float) -> str:
    """A gap with its sign, 3 decimals, a 4th where 3 would round a gap to zero, and never a
    negative zero: ``signed(0.0123) == "+0.012"``, ``signed(-0.00031) == "-0.0003"``,
    ``signed(-0.00001) == "0.000"``."""
    if abs(x) < 5e-5:
        return "0.000"
    return f"{x:+.3f}" if abs(x) >= 5e-4 else f"{x:+.4f}"


def interval(lo: float, hi: float) -> str:
    """A gap's interval, both ends signed like :func:`signed` and to the same decimals:
    ``interval(-0.00012, 0.0011) == "[-0.0001, +0.0011]"``, not ``[-0.0001, +0.001]``."""
    d = 4 if any(5e-5 <= abs(v) < 5e-4 for v in (lo, hi)) else 3
    ends = ["0." + "0" * d if abs(v) < 0.5 * 10.0**-d else f"{v:+.{d}f}" for v in (lo, hi)]
    return f"[{ends[0]}, {ends[1]}]"


def size(nbytes: Any, digits: int = 3, dash: str = "–") -> str:
    """A byte count in the unit that keeps it readable. The book's KB, MB and GB are binary, like
    its GiB of GPU memory (1 KB = 1,024 bytes, 1 GB = 2**30): ``size(15_520) == "15.2 KB"``,
    ``size(1_195_376) == "1.14 MB"``, ``size(343_214_080) == "327 MB"``, ``size(900) == "900 B"``."""
    if _missing(nbytes):
        return dash
    v = float(nbytes)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(v) < 1000 or unit == "GB":      # 1,000-1,023 KB reads better as 0.98 MB
            return f"{v:.0f} B" if unit == "B" else f"{sig(v, digits)} {unit}"
        v /= 1024
    raise AssertionError("unreachable")


def _std_decimals(std: Any) -> int | None:
    """The decimals that show ``std`` with 2 significant digits, at most 3 once ``std >= 0.0005``
    (``0.344 ± 0.005``, not ``0.3441 ± 0.0051``); None: no std."""
    if _missing(std) or float(std) == 0:
        return None
    s = abs(float(std))
    d = max(1 - math.floor(math.log10(s)), 0)
    return 3 if d > 3 and s >= 0.0005 else d


def _mean_std(mean: Any, std: Any, digits: int = 3, decimals: int | None = None) -> str:
    """``"0.784 ± 0.010"``: the std with 2 significant digits and the mean to the same decimals
    (or ``decimals`` for both, so a column lines up); just the mean when the std is missing (one seed)."""
    if _missing(mean):
        return "–"
    d = _std_decimals(std)
    if d is None:
        return sig(mean, digits) if decimals is None else f"{float(mean):,.{decimals}f}"
    d = d if decimals is None else decimals
    return f"{float(mean):,.{d}f} ± {float(std):.{d}f}"


def _column_decimals(stds: Iterable[Any]) -> int | None:
    """One number of decimals for a whole ``mean ± std`` column: the most common among its rows
    (ties: the finer), so ``0.750 ± 0.007`` and ``0.705 ± 0.044`` line up."""
    ds = [d for d in map(_std_decimals, stds) if d is not None]
    if not ds:
        return None
    return max(set(ds), key=lambda d: (ds.count(d), d))


def _row_decimals(mean: Any, std: Any, column: int | None) -> int | None:
    """The column's decimals, unless they would print a non-zero mean or std as ``0.00``: then the
    row's own (``0.004 ± 0.055`` in a column of ``0.80 ± 0.15``, not ``0.00 ± 0.05``; ``0.780 ±
    0.004``, not ``0.78 ± 0.00``, which would read as no noise at all)."""
    def vanishes(v: Any) -> bool:
        return not _missing(v) and v != 0 and abs(float(v)) < 0.5 * 10.0**-column
    if column is None or not (vanishes(mean) or vanishes(std)):
        return column
    own = _std_decimals(std)
    return column if own is None else max(column, own)


mean_std = _mean_std


def table(df: "Any", columns: Sequence[str] | None = None, mean_std: Iterable[str] = (),
          counts: Iterable[str] = (), percents: Mapping[str, float] | Iterable[str] = (),
          sizes: Iterable[str] = (), sci: Iterable[str] = ("lr",), digits: int = 3,
          labels: Mapping[str, str] | None = None, caption: str | None = None) -> "Any":
    """A display copy of ``df`` (a pandas DataFrame or Series) with every cell, and a float index,
    formatted as text.

    Args:
        df: the numbers (not modified).
        columns: which columns to show, in order (default: all); a ``<c>_std`` column next to a
            ``mean_std`` column is folded into it and need not be listed.
        mean_std: columns shown as ``mean ± std`` with their ``<c>_std`` companion.
        counts: integer columns (thousands separators); ``seeds`` always is one.
        percents: columns shown as percentages; a mapping gives each one's scale (values already in
            percent: 1; fractions: 100). A plain list means already in percent.
        sizes: byte counts, each shown in its own unit (:func:`size`: ``15.2 KB``, ``327 MB``).
        sci: columns in scientific notation with 2 significant digits (learning rates: ``1.5e-03``).
        digits: significant digits of every other number.
        labels: extra display names (beyond :data:`LABELS`).
        caption: a caption above the table.

    Returns:
        A pandas ``Styler`` (HTML in the book, text in a console) whose data are strings.
    """
    import pandas as pd

    if isinstance(df, pd.Series):
        df = df.to_frame()
    ms, cnt, sc, sz = list(mean_std), set(counts) | {"seeds"}, set(sci), set(sizes)      # a seed count is always a count
    pct = dict(percents) if isinstance(percents, Mapping) else {c: 1.0 for c in percents}
    cols = list(columns) if columns is not None else [c for c in df.columns
                                                        if not (isinstance(c, str) and c.endswith("_std") and c[:-4] in ms)]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"fmt.table: no column(s) {missing}; the table has {list(df.columns)}")
    out = pd.DataFrame(index=df.index)
    wrap: list[Any] = []
    for c in cols:
        col = df[c]
        if c in ms:
            std = df[f"{c}_std"] if f"{c}_std" in df.columns else pd.Series(float("nan"), index=df.index)
            d = _column_decimals(std)
            out[c] = [_mean_std(m, s, digits, _row_decimals(m, s, d)) for m, s in zip(col, std)]
        elif c in sz:
            out[c] = col.map(size)
        elif c in cnt or (pd.api.types.is_integer_dtype(col) and not pd.api.types.is_bool_dtype(col)):
            out[c] = col.map(count)                                   # integers stay integers: 12, not 12.0
        elif c in sc:
            out[c] = col.map(lambda v: "–" if _missing(v) else f"{float(v):.1e}")
        elif c in pct:
            out[c] = col.map(lambda v, k=pct[c]: percent(v, 2, k))
        elif pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            out[c] = col.map(lambda v: sig(v, digits))
        else:
            out[c] = col.map(_text)
            if out[c].str.len().max() > 28:              # long text wraps in its cell; numbers never do
                wrap.append(c)
    if isinstance(df.columns, pd.MultiIndex):                         # grouped columns stay grouped
        out.columns = pd.MultiIndex.from_tuples(out.columns, names=df.columns.names)
    if not isinstance(out.index, pd.MultiIndex) and pd.api.types.is_float_dtype(out.index):
        out.index = out.index.map(lambda v: sig(v, digits)).rename(out.index.name)   # 7.5, not 7.500000
    names = {**LABELS, **(labels or {})}
    shown = (lambda c: names.get(c, c.replace("_", " ")) if isinstance(c, str) else c)
    out = out.rename(columns=shown)
    wrap = [tuple(map(shown, c)) if isinstance(c, tuple) else shown(c) for c in wrap]
    if out.index.name in names:
        out.index.name = names[out.index.name]
    if out.index.nlevels == 1 and out.columns.nlevels == 1 and out.columns.name is None:
        out.columns.name, out.index.name = out.index.name, None     # the index's name in the header row, not a row of its own
    style = out.style.set_table_styles([{"selector": "td", "props": "text-align: right;"}])   # CSS, not per cell:
    # per-cell properties (Styler.map) refuse a repeated index, which a table of records can have
    if wrap:                        # by column position: works with a repeated index (a chapter with two models)
        style = style.set_table_styles([{"selector": f"td.col{list(out.columns).index(c)}",
                                         "props": "white-space: normal; min-width: 14em; text-align: left;"}
                                        for c in wrap], overwrite=False)
    if caption:
        style = style.set_caption(caption)
    return style
