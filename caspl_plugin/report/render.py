"""Writing a report: every table as CSV and Markdown, the whole report, the PNG charts."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from caspl_plugin.data.splits import atomic_write_text

from .charts import report_charts, save_png

if TYPE_CHECKING:
    from .aggregate import Report


# ------------------------------------------------------------------------------------- files


def write_tables(report: Report, out_dir: str | os.PathLike) -> list[Path]:
    """Each table as ``<name>.csv`` and ``<name>.md`` plus all of them in ``report.md`` (atomic writes)."""
    out_dir = Path(out_dir)
    written = []
    for table in report.tables:
        for suffix, text in ((".csv", table.to_csv()), (".md", table.to_markdown())):
            atomic_write_text(out_dir / f"{table.name}{suffix}", text)
            written.append(out_dir / f"{table.name}{suffix}")
    document = "\n".join(["# Results", "", report.summary(), ""] + [t.to_markdown() for t in report.tables])
    atomic_write_text(out_dir / "report.md", document)
    return written + [out_dir / "report.md"]


def save_charts(report: Report, out_dir: str | os.PathLike) -> list[Path]:
    """The chart of every results table (:func:`~caspl_plugin.report.charts.report_charts`) as
    ``<name>.png``. Raises :class:`~caspl_plugin.report.charts.MatplotlibMissing` without matplotlib."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_png(chart.figure, out_dir / f"{chart.name}.png") for chart in report_charts(report)]
