"""Charts of the result tables, one style for ``caspl report`` and the demos.

Each chart is drawn from one or more :class:`~caspl_plugin.report.table.Table` objects (or, for the
demos, from the same numbers their table prints) and nothing else, so the figure shows exactly what
the table says:

- base-to-novel table: grouped Base / Novel / HM bars per dataset, ± std over seeds on Base and Novel;
- HM overview: HM bars per dataset, one colour per trainer;
- candidate-vs-baseline table: the Base / Novel / HM differences per dataset around zero;
- few-shot tables (all of a report together): accuracy vs shots (log2 axis), one panel per dataset
  and the Average, one line per trainer, a shaded ± std band over seeds;
- cross-dataset / domain-generalisation tables (all together): bars per target dataset, one colour
  per trainer, ± std over seeds, the source / cross-dataset / domain-generalisation sections apart.

The rules every chart follows:

- **spread**: an error bar (or a band) is drawn only where a value has a spread — more than one
  value behind it and a standard deviation above zero (:func:`has_spread`); a row measured once
  (zero-shot rows, one seed) or an average of means draws no bar and no caps;
- **colours**: Base / Novel / HM have fixed colours (:data:`METRIC_COLOURS`); trainers get one colour
  each, in order of first use, the same in every chart of one report (:class:`Palette`);
- a missing value (``-`` in the table) draws nothing; Average rows are hatched and set apart by a
  dotted line; the legend sits above the axes, never over the data.

matplotlib is imported by :func:`_matplotlib` only (Agg canvas, no pyplot state); without it every
chart raises :class:`MatplotlibMissing` (an ``ImportError``) whose message is one line saying what
to install.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from caspl_plugin.files import atomic_write

from .aggregate import dataset_order

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .aggregate import Report
    from .table import Table


class MatplotlibMissing(ImportError):
    """A chart was asked for and matplotlib is not installed."""

    def __init__(self):
        super().__init__("matplotlib is not installed, charts skipped (pip install 'caspl-plugin[plots]')")


#: fixed colours of the base-to-novel metrics (colour-blind safe)
METRIC_COLOURS = {"base": "#4477AA", "novel": "#EE7733", "hm": "#228833"}
METRIC_LABELS = {"base": "Base", "novel": "Novel", "hm": "HM"}
#: trainer colours (light, dark) per family, assigned in order of first use (:class:`Palette`)
METHOD_COLOURS = (("#6BAED6", "#08519C"), ("#FD8D3C", "#A63603"), ("#74C476", "#006D2C"),
                  ("#FB6A4A", "#A50F15"), ("#9E9AC8", "#54278F"), ("#BDBDBD", "#252525"))
_CASCADE_PREFIX = "CasPL_"
_CASCADE = _CASCADE_PREFIX.lower()
ERROR_COLOUR = "#222222"
AVERAGE_HATCH = "///"
SPREAD_LABEL = "{} ± std"  # an error bar's or a band's artist label, with a leading "_" (not in the legend)
DPI = 150
_MAX_VALUE_LABELS = 30  # value labels over the bars up to this many bars
_SECTION_TITLES = {"source": "source", "cross-dataset": "cross-dataset",
                   "domain-generalisation": "domain generalisation", "other": "other (not averaged)"}


def _matplotlib():
    """``(Figure, FigureCanvasAgg)``: the one place matplotlib is imported."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MatplotlibMissing() from error
    return Figure, FigureCanvasAgg


def _bar_width(categories: int, series: int) -> float:
    """Figure width (inches) for ``categories`` groups of ``series`` bars."""
    return min(16.0, max(6.0, 2.0 + 0.22 * categories * series + 0.15 * categories))


def _new_figure(width: float, height: float) -> "Figure":
    Figure, FigureCanvasAgg = _matplotlib()
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


# -------------------------------------------------------------------------------------- rules


def has_spread(std: Optional[float], count: Optional[int] = None) -> bool:
    """Whether a value gets an error bar: a std above zero over more than one value (``count=None``:
    the number of values is not known, the std decides)."""
    return std is not None and not math.isnan(std) and std > 0 and (count is None or count > 1)


def _number(value) -> float:
    return math.nan if value is None else float(value)


class Palette:
    """One colour per trainer label, in order of first use; the same label keeps its colour.

    A trainer and its cascade (``X`` and ``CasPL_X``, with the same suffix) share a hue: the cascade
    dark, the trainer light (and dashed, as a line), so each pair reads together in every chart."""

    def __init__(self, labels: Sequence[str] = ()):
        self._labels = set(labels)
        self._families: dict[str, int] = {}

    @staticmethod
    def _split(label: str) -> tuple[str, bool]:
        cascade = label.lower().startswith(_CASCADE)
        return (label[len(_CASCADE):] if cascade else label), cascade

    def _paired(self, label: str) -> bool:
        family, cascade = self._split(label)
        return not cascade and (_CASCADE_PREFIX + family).lower() in {l.lower() for l in self._labels}

    def __call__(self, label: str) -> str:
        self._labels.add(label)
        family, _ = self._split(label)
        index = self._families.setdefault(family.lower(), len(self._families)) % len(METHOD_COLOURS)
        return METHOD_COLOURS[index][0 if self._paired(label) else 1]

    def line_style(self, label: str) -> str:
        return "--" if self._paired(label) else "-"

    @classmethod
    def order(cls, label: str) -> tuple:
        """Sort key that puts each trainer right before its cascade (``X``, ``CasPL_X``, ``Y``, ...)."""
        family, cascade = cls._split(label)
        return family.lower(), cascade, label


@dataclass
class Series:
    """One bar series (or line): a value per category, with its std and the number of values behind it."""

    label: str
    values: Sequence[Optional[float]]
    stds: Sequence[Optional[float]] = ()
    counts: Sequence[Optional[int]] = ()
    colour: Optional[str] = None

    def std(self, index: int) -> Optional[float]:
        return self.stds[index] if index < len(self.stds) else None

    def count(self, index: int) -> Optional[int]:
        return self.counts[index] if index < len(self.counts) else None

    def spread_at(self, index: int) -> bool:
        return self.values[index] is not None and has_spread(self.std(index), self.count(index))


# ----------------------------------------------------------------------------------- drawing


def _legend_above(axes: "Axes", count: int) -> None:
    """The legend in one row between the title and the axes."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(count, 6), frameon=False, fontsize=8,
                    borderaxespad=0.3)


def grouped_bars(axes: "Axes", categories: Sequence[str], series: Sequence[Series], *,
                 averages: Sequence[int] = (), separate_averages: bool = True,
                 value_format: Optional[str] = "{:.1f}") -> list[float]:
    """Bars of every series side by side per category; ± std error bars where :func:`has_spread`;
    categories in ``averages`` hatched (and set apart by a dotted line); value labels beyond the bars
    (and their error bars) when there are few enough bars. The bars of a series form one container
    labelled with the series' label, its error bars one container labelled ``_<label> ± std``.
    Returns the farthest point drawn from zero per bar (bar end plus its error bar)."""
    width = 0.8 / max(len(series), 1)
    labelled = _value_labels(len(categories), len(series), value_format)
    tops = []
    for offset, item in enumerate(series):
        x = [j + (offset - (len(series) - 1) / 2) * width for j in range(len(categories))]
        heights = [_number(v) for v in item.values]
        bars = axes.bar(x, heights, width, label=item.label, color=item.colour, edgecolor="white", linewidth=0.6)
        for j in averages:
            bars.patches[j].set_hatch(AVERAGE_HATCH)
        spread = [j for j in range(len(categories)) if item.spread_at(j)]
        if spread:
            axes.errorbar([x[j] for j in spread], [heights[j] for j in spread], yerr=[item.std(j) for j in spread],
                          fmt="none", ecolor=ERROR_COLOUR, elinewidth=0.9, capsize=2.5, capthick=0.9,
                          label="_" + SPREAD_LABEL.format(item.label))
        for j, height in enumerate(heights):
            if math.isnan(height):
                continue
            reach = item.std(j) if j in spread else 0.0
            top = height + reach if height >= 0 else height - reach
            tops.append(top)
            if labelled:
                axes.annotate(value_format.format(height), (x[j], top), xytext=(0, 2 if height >= 0 else -2),
                              textcoords="offset points", ha="center", va="bottom" if height >= 0 else "top",
                              rotation=90, fontsize=6.5, color="#333333")
    axes.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 3 else 0,
                    ha="right" if len(categories) > 3 else "center", fontsize=8)
    axes.set_xlim(-0.6, len(categories) - 0.4)
    for j in averages if separate_averages else ():
        if j > 0:
            axes.axvline(j - 0.5, color="#999999", linewidth=0.8, linestyle=":")
    axes.tick_params(axis="y", labelsize=8)
    axes.grid(axis="y", color="#DDDDDD", linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    return tops


def _value_labels(categories: int, series: int, value_format: Optional[str] = "{:.1f}") -> bool:
    """Whether the bars carry their values (few enough bars to read them)."""
    return value_format is not None and categories * series <= _MAX_VALUE_LABELS


def _accuracy_axis(axes: "Axes", tops: Sequence[float], labelled: bool, headroom: float = 0.0) -> None:
    """y from 0 to 100 (more when a value with its error bar passes 100), room for the value labels."""
    top = max([100.0] + list(tops))
    axes.set_ylim(0, top + (14 if labelled else 3) + headroom)
    axes.set_yticks(range(0, 101, 20))
    axes.set_ylabel("accuracy (%)", fontsize=9)


def _average_rows(categories: Sequence[str]) -> list[int]:
    return [j for j, name in enumerate(categories) if str(name).lower().startswith("average")]


def _bar_figure(categories: Sequence[str], series: Sequence[Series], title: str, *, caption: str = "",
                averages: Optional[Sequence[int]] = None, value_format: Optional[str] = "{:.1f}") -> "Figure":
    averages = _average_rows(categories) if averages is None else averages
    figure = _new_figure(_bar_width(len(categories), len(series)), 4.6)
    axes = figure.add_subplot()
    tops = grouped_bars(axes, categories, series, averages=averages, value_format=value_format)
    _accuracy_axis(axes, tops, _value_labels(len(categories), len(series), value_format))
    if caption:
        axes.set_xlabel(caption, fontsize=8)
    figure.suptitle(title, fontsize=10)
    _legend_above(axes, len(series))
    return figure


def base_novel_hm_figure(categories: Sequence[str], base: Series, novel: Series, hm: Series, title: str, *,
                         caption: str = "", averages: Optional[Sequence[int]] = None) -> "Figure":
    """Grouped Base / Novel / HM bars per category (dataset, or model in the demos), in the metric
    colours; ``caption`` under the x axis."""
    series = [replace(item, colour=item.colour or METRIC_COLOURS[key])
              for key, item in (("base", base), ("novel", novel), ("hm", hm))]
    return _bar_figure(categories, series, title, caption=caption, averages=averages)


# ----------------------------------------------------------------------------- report charts


def base2new_chart(table: "Table") -> "Figure":
    """A base-to-novel table: Base / Novel / HM per dataset, ± std over seeds on Base and Novel."""
    categories = [str(d) for d in table.column("dataset")]

    def series(key: str, spread: bool) -> Series:
        return Series(METRIC_LABELS[key], table.column(key), table.column(f"{key}_std") if spread else (),
                      table.column(f"{key}_seeds") if spread else ())

    return base_novel_hm_figure(categories, series("base", True), series("novel", True), series("hm", False),
                                table.title, caption="error bars: ± std over seeds (none where one seed ran)")


def overview_chart(table: "Table", palette: Optional[Palette] = None) -> "Figure":
    """The HM of every trainer per dataset (the base-to-novel HM overview)."""
    palette = palette or Palette()
    categories = [str(d) for d in table.column("dataset")]
    series = [Series(name, table.column(name), colour=palette(name))
              for name in sorted(table.columns[1:], key=Palette.order)]
    return _bar_figure(categories, series, table.title, caption="HM of the seed-averaged base and novel accuracies")


def delta_chart(table: "Table") -> "Figure":
    """A candidate-vs-baseline table: candidate minus baseline in Base / Novel / HM per dataset."""
    categories = [str(d) for d in table.column("dataset")]
    series = [Series(f"Δ {METRIC_LABELS[key]}", table.column(f"{key}_delta"), colour=METRIC_COLOURS[key])
              for key in ("base", "novel", "hm")]
    figure = _new_figure(_bar_width(len(categories), len(series)), 4.6)
    axes = figure.add_subplot()
    tops = grouped_bars(axes, categories, series, averages=_average_rows(categories), value_format="{:+.1f}")
    axes.axhline(0, color="#333333", linewidth=0.8)
    low, high = min(tops + [0.0]), max(tops + [0.0])
    span = max(high - low, 1.0)
    pad = span * (0.3 if _value_labels(len(categories), len(series)) else 0.08)
    axes.set_ylim(low - (pad if low < 0 else 0.03 * span), high + (pad if high > 0 else 0.03 * span))
    axes.set_ylabel("candidate − baseline (points)", fontsize=9)
    figure.suptitle(table.title, fontsize=10)
    _legend_above(axes, len(series))
    return figure


def _shots_of(table: "Table") -> list[int]:
    return [int(name[:-len("_shots")]) for name in table.columns[1:] if name.endswith("_shots")]


def few_shot_chart(tables: Sequence["Table"], labels: Optional[Sequence[str]] = None,
                   palette: Optional[Palette] = None) -> "Figure":
    """Accuracy vs shots per class, one panel per dataset (the Average first, as in CoOp's figure),
    one line per few-shot table (trainer) labelled ``labels`` (default: the tables' ``label``), a
    shaded band of ± std over seeds where a point has a spread. Log2 x axis, ticks at the shots run."""
    palette = palette or Palette()
    labels = list(labels) if labels is not None else [t.label or t.title for t in tables]
    datasets = sorted({str(d) for table in tables for d in table.column("dataset")},
                      key=lambda d: (d != "Average",) + dataset_order(d))
    shots = sorted({k for table in tables for k in _shots_of(table)})
    columns = min(4, len(datasets))
    rows = math.ceil(len(datasets) / columns)
    figure = _new_figure(2.9 * columns + 0.4, 2.5 * rows + 0.7)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, panel in enumerate(grid.flat):
        if index >= len(datasets):
            panel.set_axis_off()
            continue
        dataset = datasets[index]
        for table, label in zip(tables, labels):
            row = next((r for r in table.rows if str(r[0]) == dataset), None)
            if row is None:
                continue
            points = [(k, row[table.columns.index(f"{k}_shots")], row[table.columns.index(f"{k}_shots_std")])
                      for k in _shots_of(table)]
            points = [(k, mean, std) for k, mean, std in points if mean is not None]
            if not points:
                continue
            colour = palette(label)
            x = [k for k, _, _ in points]
            panel.plot(x, [mean for _, mean, _ in points], marker="o", markersize=3.5, linewidth=1.4,
                       color=colour, linestyle=palette.line_style(label), label=label)
            if any(has_spread(std) for _, _, std in points):
                spread = [std if has_spread(std) else 0.0 for _, _, std in points]
                panel.fill_between(x, [m - s for (_, m, _), s in zip(points, spread)],
                                   [m + s for (_, m, _), s in zip(points, spread)],
                                   color=colour, alpha=0.2, linewidth=0, label="_" + SPREAD_LABEL.format(label))
        panel.set_xscale("log", base=2)
        panel.set_xticks(shots, [str(k) for k in shots])
        panel.minorticks_off()
        if len(shots) > 1:
            panel.set_xlim(shots[0] / 1.25, shots[-1] * 1.25)
        panel.set_title(dataset, fontsize=9)
        panel.tick_params(labelsize=8)
        panel.grid(color="#E5E5E5", linewidth=0.6)
        for side in ("top", "right"):
            panel.spines[side].set_visible(False)
        if index % columns == 0:
            panel.set_ylabel("accuracy (%)", fontsize=8)
        if index + columns >= len(datasets):
            panel.set_xlabel("shots per class", fontsize=8)
    figure.suptitle("Few-shot accuracy (shaded: ± std over seeds)", fontsize=10)
    handles = {}
    for panel in grid.flat:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(len(handles), 6),
                      frameon=False, fontsize=8)
    return figure


def _xd_section(role: str, dataset: str) -> str:
    if role.startswith("source"):
        return "source"
    if role == "average":
        return "domain-generalisation" if "domain" in dataset else "cross-dataset"
    return role if role in _SECTION_TITLES else "other"


def xd_categories(tables: Sequence["Table"]) -> list[tuple[str, str]]:
    """The ``(role, dataset)`` rows of the cross-dataset tables in chart order: source, the
    cross-dataset targets and their average, the ImageNet variants and theirs, the others."""
    sections = list(_SECTION_TITLES)
    keys = {(str(row[0]), str(row[1])) for table in tables for row in table.rows}
    return sorted(keys, key=lambda key: (sections.index(_xd_section(*key)), key[0] == "average")
                  + dataset_order(key[1]) + (key[0],))


def xd_chart(tables: Sequence["Table"], labels: Optional[Sequence[str]] = None,
             palette: Optional[Palette] = None) -> "Figure":
    """Cross-dataset and domain-generalisation accuracy per dataset, one bar colour per table
    (trainer) labelled ``labels`` (default: the tables' ``label``), ± std over seeds, the sections
    (source, cross-dataset, domain generalisation) set apart with their averages hatched."""
    palette = palette or Palette()
    labels = list(labels) if labels is not None else [t.label or t.title for t in tables]
    keys = xd_categories(tables)
    series = []
    for table, label in zip(tables, labels):
        rows = {(str(r[0]), str(r[1])): dict(zip(table.columns, r)) for r in table.rows}
        pick = [rows.get(key, {}) for key in keys]
        series.append(Series(label, [r.get("accuracy") for r in pick], [r.get("accuracy_std") for r in pick],
                             [r.get("seeds") for r in pick], colour=palette(label)))
    categories = ["Average" if role == "average" else f"{dataset} (eval-only)" if "eval-only" in role else dataset
                  for role, dataset in keys]
    averages = [j for j, (role, _) in enumerate(keys) if role == "average"]
    figure = _new_figure(_bar_width(len(keys), len(series)), 4.6)
    axes = figure.add_subplot()
    tops = grouped_bars(axes, categories, series, averages=averages, separate_averages=False)
    _accuracy_axis(axes, tops, _value_labels(len(keys), len(series)), headroom=7)
    sections = [_xd_section(*key) for key in keys]
    starts = [j for j in range(len(keys)) if j == 0 or sections[j] != sections[j - 1]]
    top = axes.get_ylim()[1]
    for position, j in enumerate(starts):
        end = starts[position + 1] if position + 1 < len(starts) else len(keys)
        if j > 0:
            axes.axvline(j - 0.5, color="#999999", linewidth=0.8, linestyle=":")
        axes.text((j + end - 1) / 2, top, _SECTION_TITLES[sections[j]], ha="center", va="top", fontsize=8,
                  color="#555555")
    axes.set_xlabel("error bars: ± std over seeds (none where one seed ran)", fontsize=8)
    figure.suptitle("Cross-dataset transfer and domain generalisation", fontsize=10)
    _legend_above(axes, len(series))
    return figure


@dataclass
class Chart:
    """A drawn chart: its file stem, the figure, and the tables it shows."""

    name: str
    figure: "Figure"
    tables: list = field(default_factory=list)


def report_charts(report: "Report") -> list[Chart]:
    """A chart for every results table of ``report``: one per base-to-novel table, HM overview and
    candidate-vs-baseline table (named like the table), one ``few_shot`` for all few-shot tables,
    one ``xd`` for all cross-dataset tables. Raises :class:`MatplotlibMissing` without matplotlib."""
    palette = Palette([t.label for t in report.tables if t.label] +
                      [c for t in report.tables if t.kind == "base2new_overview" for c in t.columns[1:]])
    charts = []
    for table in report.tables:
        if table.kind == "base2new":
            charts.append(Chart(table.name, base2new_chart(table), [table]))
        elif table.kind == "base2new_overview":
            charts.append(Chart(table.name, overview_chart(table, palette), [table]))
        elif table.kind == "base2new_delta":
            charts.append(Chart(table.name, delta_chart(table), [table]))
    for kind, name, draw in (("few_shot", "few_shot", few_shot_chart), ("xd", "xd", xd_chart)):
        tables = sorted((t for t in report.tables if t.kind == kind), key=lambda t: Palette.order(t.label or t.title))
        if tables:
            charts.append(Chart(name, draw(tables, palette=palette), tables))
    return charts


def save_png(figure: "Figure", path: str | os.PathLike) -> Path:
    """The figure as a PNG at ``path`` (atomic write)."""
    path = Path(path)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write(path, buffer.getvalue())
    return path
