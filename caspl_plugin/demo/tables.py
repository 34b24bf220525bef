"""What both demos write: table rows (seed means, ± std over seeds, HM of the means), the text,
Markdown and CSV forms, and the chart (the report's style)."""
from __future__ import annotations

import csv
import io
import logging
import statistics
from pathlib import Path
from typing import Optional, Sequence

from ..report.aggregate import harmonic_mean
from .runs import DemoResult

logger = logging.getLogger(__name__)


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def _std(values: Sequence[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def table_rows(result: DemoResult) -> list[dict]:
    """One row per model: formatted cells, seed means, and the std over seeds (0 for one run)."""
    rows = []
    for name, row in result.rows.items():
        base, novel = statistics.mean(row["base"]), statistics.mean(row["novel"])
        per_seed_hm = [harmonic_mean(b, n) for b, n in zip(row["base"], row["novel"])]
        rows.append({
            "model": name, "base": _mean_std(row["base"]), "novel": _mean_std(row["novel"]),
            "hm": f"{harmonic_mean(base, novel):.1f}", "base_mean": base, "novel_mean": novel,
            "base_std": _std(row["base"]), "novel_std": _std(row["novel"]), "hm_std": _std(per_seed_hm),
            "runs": len(row["base"]),
        })
    return rows


def format_table(result: DemoResult) -> str:
    rows = table_rows(result)
    widths = [max(len("model"), *(len(r["model"]) for r in rows)), 13, 13, 6]
    lines = [f"{'model':<{widths[0]}}  {'base':>{widths[1]}}  {'novel':>{widths[2]}}  {'HM':>{widths[3]}}"]
    lines.append("-" * (sum(widths) + 6))
    for r in rows:
        lines.append(f"{r['model']:<{widths[0]}}  {r['base']:>{widths[1]}}  {r['novel']:>{widths[2]}}  {r['hm']:>{widths[3]}}")
    return "\n".join(lines)


def markdown_table(result: DemoResult) -> list[str]:
    return ["| model | base | novel | HM |", "|---|---:|---:|---:|",
            *[f"| {r['model']} | {r['base']} | {r['novel']} | {r['hm']} |" for r in table_rows(result)]]


def csv_text(result: DemoResult, seeds: Sequence[int]) -> str:
    """Seed means, HM, std over seeds and every per-seed value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "runs", "base_mean", "novel_mean", "hm", "base_std", "novel_std",
                     *[f"base_seed{s}" for s in seeds], *[f"novel_seed{s}" for s in seeds]])
    for name, row in result.rows.items():
        base, novel = statistics.mean(row["base"]), statistics.mean(row["novel"])
        pad = [""] * (len(seeds) - len(row["base"]))
        writer.writerow([name, len(row["base"]), f"{base:.2f}", f"{novel:.2f}", f"{harmonic_mean(base, novel):.2f}",
                         f"{_std(row['base']):.2f}", f"{_std(row['novel']):.2f}",
                         *[f"{v:.2f}" for v in row["base"]], *pad, *[f"{v:.2f}" for v in row["novel"]], *pad])
    return buffer.getvalue()


def seed_caption(seeds: Sequence[int]) -> str:
    """How the chart and tables name the seeds of the run (exactly the seeds that ran)."""
    listed = ", ".join(map(str, seeds))
    return f"seed {listed}" if len(seeds) == 1 else f"seeds {listed}"


def chart(rows: list[dict], path: Path, title: str, seeds: str) -> Path:
    """Grouped bars (base, novel, HM) per model in the report's chart style
    (:func:`caspl_plugin.report.charts.base_novel_hm_figure`): ± std over seeds on base and novel
    where a row ran more than once, none on rows run once (zero-shot); HM of the seed means, as the
    table. PNG via atomic_write."""
    from ..report.charts import METRIC_LABELS, Series, base_novel_hm_figure, save_png

    def series(key: str) -> Series:
        return Series(METRIC_LABELS[key], [r[f"{key}_mean"] for r in rows], [r[f"{key}_std"] for r in rows],
                      [r["runs"] for r in rows])

    hm = Series("HM", [harmonic_mean(r["base_mean"], r["novel_mean"]) for r in rows])
    figure = base_novel_hm_figure([r["model"] for r in rows], series("base"), series("novel"), hm, title,
                                  caption=f"model (error bars: ± std over phase-2 {seeds}; rows run once have none)",
                                  averages=())
    return save_png(figure, path)


def chart_or_skip(rows: list[dict], path: Path, title: str, seeds: str) -> Optional[Path]:
    """:func:`chart`, or None with one warning line when matplotlib is not installed."""
    from ..report.charts import MatplotlibMissing

    try:
        return chart(rows, path, title, seeds)
    except MatplotlibMissing as missing:
        logger.warning("%s", missing)
        return None
