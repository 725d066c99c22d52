"""Matplotlib figures drawn without pyplot, so the user's backend and pyplot state stay as
they were: :class:`matplotlib.figure.Figure` objects (shown by a notebook, saved with
``fig.savefig``), legends readable at the saved size, distinguishable reference lines.
"""

from __future__ import annotations

import io
import math

LEGEND_PT = 9  # legend text, points at the saved size
DPI = 300  # PNG resolution for print
FORMATS = ("png", "svg", "pdf")
# reference lines (horizontal values such as the infinite-width predictions): one dash style
# each, in the order given, so that each stays visible when two lie close together
DASHES = ("--", "-.", ":", "-")
# saved files: TrueType fonts in PDF (editable, accepted by journals), and no dates or random
# ids, so a rerun writes the same bytes
_SAVE_RC = {"pdf.fonttype": 42, "svg.hashsalt": "widenets"}
_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def figure(nrows: int = 1, ncols: int = 1, *, size, squeeze: bool = True, **kw):
    """(Figure, axes) like ``plt.subplots`` but not registered with pyplot (no backend)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kw)


def legend(ax, *, outside: bool = False, **kw):
    """A legend in LEGEND_PT type with handles long enough to show a dash pattern, the data
    (error bars) before the lines; outside the axes on the right when ``outside`` (the
    constrained layout makes room)."""
    from matplotlib.container import Container

    if "handles" not in kw:
        pairs = list(zip(*ax.get_legend_handles_labels(), strict=True))
        pairs.sort(key=lambda hl: not isinstance(hl[0], Container))  # stable
        kw["handles"] = [h for h, _ in pairs]
        kw["labels"] = [lab for _, lab in pairs]
    if outside:
        kw = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, **kw}
    kw.setdefault("handlelength", 3.0)
    kw.setdefault("fontsize", LEGEND_PT)
    if "title" in kw:
        kw.setdefault("title_fontsize", LEGEND_PT)
    return ax.legend(**kw)


def plain_log_ticks(ax, axis: str = "y", max_ratio: float = 30.0) -> None:
    """Ticks at 1, 2, 5 x 10^k labelled as plain numbers (0.02, not 2 x 10^-2) on a log axis
    spanning at most ``max_ratio``; call once the data are drawn. Wider axes keep the
    powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    if lo <= 0 or hi / lo > max_ratio:
        return
    a = ax.yaxis if axis == "y" else ax.xaxis
    subs = (1.0, 2.0, 5.0) if hi / lo > 4 else tuple(range(1, 10))
    a.set_major_locator(LogLocator(subs=subs))
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_locator(LogLocator(subs="all"))
    a.set_minor_formatter(NullFormatter())


def width_axis(ax, widths, label: str = "width") -> None:
    """A log-2 x axis with a tick, labelled as a plain number, at each of ``widths``."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ws = sorted(set(widths))
    ax.set_xticks(ws, [f"{w:g}" for w in ws])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(label)


def same_value(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def reference_lines(ax, refs, *, lw: float = 1.5) -> list:
    """Horizontal lines at the values of ``refs`` [(value, label, color), ...], value None
    skipped. The i-th entry gets dash style ``DASHES[i]``; entries of equal value are drawn
    once, in the first one's style, with the labels joined by " = " (no hidden line)."""
    groups: list[list] = []
    for i, (value, label, color) in enumerate(refs):
        if value is None or not math.isfinite(value):
            continue
        for g in groups:
            if same_value(g[0][0], value):
                g.append((value, label, color, i))
                break
        else:
            groups.append([(value, label, color, i)])
    lines = []
    for g in groups:
        value, _, color, i = g[0]
        label = " = ".join(m[1] for m in g)
        lines.append(ax.axhline(value, color=color, ls=DASHES[i % len(DASHES)], lw=lw, label=label))
    return lines


def render(fig, fmt: str, dpi: int = DPI) -> bytes:
    """The figure as ``fmt`` bytes (png, svg or pdf) at its own size (the constrained layout
    already fits legends and labels inside it: no second draw to trim it)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context(_SAVE_RC):
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=_METADATA[fmt])
    return buf.getvalue()
