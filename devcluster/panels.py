"""The chart's Grafana dashboard drawn from a real Prometheus, as a PNG.

Grafana itself does not build here (its front end needs a web build toolchain), so this
draws the dashboard's panels the way a reader would check them: each panel's queries
run as Grafana sends them (the caller expands the variables; a range query over the
window, or an instant one for a table), then matplotlib draws them by panel type, at
the panel's place on Grafana's 24-column grid. timeseries: one line per series, named
by the target's legendFormat; state-timeline: one band per series coloured by value;
heatmap: each bucket's increase over time (Prometheus's cumulative ``le`` buckets
differenced, as Grafana's heatmap format does); table: the instant query's labels and
value. Units, thresholds and overrides are not drawn.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from devcluster.prometheus import Prometheus

JSON = dict[str, Any]
COLUMNS = 24  # Grafana's grid
ROW_INCHES = 0.42
# matplotlib's date numbers (days since 1970-01-01) as UTC clock times
CLOCK = FuncFormatter(lambda days, _: time.strftime("%H:%M:%S", time.gmtime(days * 86400)))
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Window:
    """The range every panel's queries cover."""

    start: float
    end: float
    step: float


@dataclass(frozen=True)
class Series:
    name: str
    times: list[float]  # seconds since the epoch
    values: list[float]

    @property
    def dates(self) -> np.ndarray:
        return (np.array(self.times) * 1000).astype("datetime64[ms]")


def render(
    dashboard: JSON, prom: Prometheus, expand: Callable[[str], str], window: Window, out: Path
) -> dict[str, int]:
    """Draw every panel of ``dashboard`` into ``out``; the number of series each panel
    drew, by title."""
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = Figure(figsize=(18, (rows + 1) * ROW_INCHES), layout=None)
    drawn = {}
    for panel in panels:
        axes = figure.add_axes(_place(panel["gridPos"], rows))
        axes.set_title(panel["title"], fontsize=10, loc="left")
        drawn[panel["title"]] = _draw(panel, axes, prom, expand, window)
    figure.suptitle(dashboard.get("title", ""), fontsize=12, x=0.01, y=0.995, ha="left")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=80)
    return drawn


def _place(grid: JSON, rows: int) -> tuple[float, float, float, float]:
    """The panel's rectangle in figure fractions, leaving room for its title, tick labels
    and y labels, under one row for the dashboard's title."""
    left_pad, right_pad, top_pad, bottom_pad = 2.4, 0.3, 0.6, 1.0  # columns, rows
    total = rows + 1
    left = (grid["x"] + left_pad) / COLUMNS
    width = (grid["w"] - left_pad - right_pad) / COLUMNS
    bottom = 1 - (1 + grid["y"] + grid["h"] - bottom_pad) / total
    height = (grid["h"] - top_pad - bottom_pad) / total
    return left, bottom, width, height


def _draw(
    panel: JSON, axes: Axes, prom: Prometheus, expand: Callable[[str], str], window: Window
) -> int:
    if panel["type"] == "table":
        return _table(axes, [r for t in panel["targets"] for r in prom.query(expand(t["expr"]))])
    series = [s for t in panel["targets"] for s in _range(prom, expand(t["expr"]), t, window)]
    if panel["type"] == "state-timeline":
        _states(axes, series)
    elif panel["type"] == "heatmap":
        _heatmap(axes, series)
    else:
        _lines(axes, series)
    if not series:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    return len(series)


def _range(prom: Prometheus, expr: str, target: JSON, window: Window) -> list[Series]:
    data = prom.api("query_range", query=expr, start=window.start, end=window.end, step=window.step)
    legend = target.get("legendFormat") or ""
    return [
        Series(
            _name(legend, r["metric"]),
            [float(t) for t, _ in r["values"]],
            [float(v) for _, v in r["values"]],
        )
        for r in data["result"]
    ]


def _name(legend: str, labels: dict[str, str]) -> str:
    """The series' name as Grafana writes it from ``{{label}}`` templates."""
    return _LEGEND.sub(lambda m: labels.get(m[1], ""), legend) or str(labels)


def _lines(axes: Axes, series: list[Series]) -> None:
    for s in sorted(series, key=lambda s: s.name):
        axes.plot(s.dates, s.values, label=s.name, linewidth=1.2)
    if series:
        axes.legend(fontsize=7, loc="upper left", ncols=2, frameon=False)
    axes.xaxis.set_major_formatter(CLOCK)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)


def _states(axes: Axes, series: list[Series]) -> None:
    """One band per series; each run of one value a bar of that value's colour."""
    values = sorted({v for s in series for v in s.values if v == v})
    colours = {v: f"C{i}" for i, v in enumerate(values)}
    ordered = sorted(series, key=lambda s: s.name)
    for row, s in enumerate(ordered):
        for first, last, value in _runs(s):
            axes.barh(row, last - first, left=first, color=colours[value], height=0.8)
    axes.set_yticks(range(len(ordered)), [s.name for s in ordered], fontsize=6)
    axes.xaxis_date()
    axes.xaxis.set_major_formatter(CLOCK)
    axes.tick_params(labelsize=7)
    if values:
        keys = [Patch(color=colour, label=f"{value:g}") for value, colour in colours.items()]
        axes.legend(
            handles=keys, fontsize=7, loc="lower right", bbox_to_anchor=(1, 1), ncols=len(keys)
        )


def _runs(series: Series) -> list[tuple[float, float, float]]:
    """(start, end, value) of each run of one value, in matplotlib's date numbers (days
    since its default epoch, 1970-01-01)."""
    runs: list[tuple[float, float, float]] = []
    for when, value in zip(series.times, series.values, strict=True):
        t = when / 86400
        if value != value:  # NaN: a gap
            continue
        if runs and runs[-1][2] == value:
            runs[-1] = (runs[-1][0], t, value)
        else:
            runs.append((t, t, value))
    step = 1 / 86400  # a run of one sample still shows
    return [(a, max(b, a + step), v) for a, b, v in runs]


def _heatmap(axes: Axes, series: list[Series]) -> None:
    """Cumulative ``le`` buckets differenced into counts per bucket, over time."""
    if not series:
        return
    buckets = sorted(series, key=lambda s: float(s.name))
    times = buckets[0].times
    counts = [[0.0] * len(times) for _ in buckets]
    for i, bucket in enumerate(buckets):
        below = buckets[i - 1].values if i else [0.0] * len(times)
        for j, (value, under) in enumerate(zip(bucket.values, below, strict=False)):
            counts[i][j] = max(0.0, value - under) if value == value else 0.0
    axes.imshow(counts, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    ticks = range(0, len(buckets), max(1, len(buckets) // 8))
    axes.set_yticks(list(ticks), [buckets[i].name for i in ticks], fontsize=7)
    axes.set_ylabel("le (s)", fontsize=7)
    xticks = range(0, len(times), max(1, len(times) // 6))
    labels = [time.strftime("%H:%M:%S", time.gmtime(times[j])) for j in xticks]
    axes.set_xticks(list(xticks), labels, fontsize=7)


def _table(axes: Axes, rows: list[JSON]) -> int:
    axes.axis("off")
    if not rows:
        return 0
    columns = sorted({k for r in rows for k in r["metric"] if k != "__name__"})
    cells = [[r["metric"].get(c, "") for c in columns] + [r["value"][1]] for r in rows]
    table = axes.table(cellText=cells, colLabels=[*columns, "value"], loc="upper center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(list(range(len(columns) + 1)))
    return len(rows)
