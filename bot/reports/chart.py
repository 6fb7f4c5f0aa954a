"""The per-grid chart of the monthly bulletin: received vs done bars and a 满意率 line.

Drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no global state), with the
bundled Chinese font (:mod:`bot.fonts`) passed to every text, so the labels render the same on
any machine. The caller gives the figures and the words; this module only draws them.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot.fonts import mpl_font

#: Grid names longer than this are cut and end with "…".
NAME_MAX_CHARS = 12
#: With more grids than this the names are rotated 45° (and the bars lose their value labels).
ROTATE_ABOVE = 6
VALUE_LABELS_UP_TO = 15

_RECEIVED_COLOR = "#9db4d3"
_DONE_COLOR = "#2f6db5"
_LINE_COLOR = "#d9480f"
_DPI = 120


@dataclass(frozen=True)
class GridBar:
    """One grid's figures for the chart.

    ``satisfaction`` is the share 0..1 of rated orders rated 4–5 ★ (None: nothing was rated,
    drawn as a gap in the line, not as zero).
    """

    name: str
    received: int
    done: int
    satisfaction: float | None


def _short(name: str, limit: int = NAME_MAX_CHARS) -> str:
    name = " ".join(name.split())
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _label(labels: Mapping[str, str], key: str, default: str) -> str:
    value = labels.get(key)
    return value if value else default


def render_grid_chart(bars: Sequence[GridBar], *, title: str, labels: Mapping[str, str]) -> bytes:
    """A PNG: per grid, bars of orders received and done, and the 满意率 line (0–100 %).

    ``labels`` names the series: ``received``, ``done`` and ``satisfaction`` (legend and axis
    labels); optional ``no_data`` is the sentence shown when ``bars`` is empty (a picture with
    the title and that sentence, not an error). Long grid names are shortened to
    ``NAME_MAX_CHARS`` and, with more than ``ROTATE_ABOVE`` grids, rotated; the picture grows
    with the number of grids up to 40 and more.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    received_label = _label(labels, "received", "received")
    done_label = _label(labels, "done", "done")
    satisfaction_label = _label(labels, "satisfaction", "satisfaction")
    n = len(bars)
    width_in = min(28.0, max(7.0, 1.2 + 0.45 * n + (0.0 if n > ROTATE_ABOVE else 0.6 * n)))
    height_in = 6.0 if n > ROTATE_ABOVE else 5.0
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontproperties=mpl_font(14, bold=True), pad=30 if n else 12)

    if n == 0:
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            _label(labels, "no_data", "无数据 · no data"),
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontproperties=mpl_font(16),
            color="#666666",
        )
        return _png(fig)

    xs = list(range(n))
    step = 0.38
    received = ax.bar(
        [x - step / 2 for x in xs],
        [b.received for b in bars],
        step,
        label=received_label,
        color=_RECEIVED_COLOR,
        zorder=2,
    )
    done = ax.bar(
        [x + step / 2 for x in xs],
        [b.done for b in bars],
        step,
        label=done_label,
        color=_DONE_COLOR,
        zorder=2,
    )
    if n <= VALUE_LABELS_UP_TO:
        for container in (received, done):
            ax.bar_label(container, padding=2, fontproperties=mpl_font(8), color="#333333")
    top = max([b.received for b in bars] + [b.done for b in bars] + [1])
    ax.set_ylim(0, top * 1.15 + 0.5)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="y", color="#e6e6e6", zorder=0)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(xs)
    rotate = n > ROTATE_ABOVE
    ax.set_xticklabels(
        [_short(b.name) for b in bars],
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
        fontproperties=mpl_font(9 if rotate else 10),
    )
    ax.set_ylabel(f"{received_label} / {done_label}", fontproperties=mpl_font(10))

    ax2 = ax.twinx()
    ys = [math.nan if b.satisfaction is None else 100.0 * b.satisfaction for b in bars]
    (line,) = ax2.plot(
        xs, ys, color=_LINE_COLOR, marker="o", linewidth=2, label=satisfaction_label, zorder=3
    )
    ax2.set_ylim(0, 105)
    ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.0f}%"))
    ax2.set_ylabel(f"{satisfaction_label} (%)", fontproperties=mpl_font(10))
    for axis in (ax, ax2):
        for tick in axis.get_yticklabels():
            tick.set_fontproperties(mpl_font(9))
    ax.legend(
        handles=[received, done, line],
        labels=[received_label, done_label, satisfaction_label],
        prop=mpl_font(9),
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=3,
        frameon=False,
    )
    fig.tight_layout()
    return _png(fig)


def _png(fig: object) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # type: ignore[attr-defined]
    return buffer.getvalue()
