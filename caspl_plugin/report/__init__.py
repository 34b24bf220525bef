"""Result tables from the logs of finished Dassl runs (what ``caspl report`` prints and writes).

Three steps, one module each:

- :mod:`~caspl_plugin.report.parse`: Dassl logs and the run folders they sit in -> :class:`Run`;
- :mod:`~caspl_plugin.report.aggregate`: runs -> tables (per protocol and trainer, comparisons) and
  flags of suspicious runs -> :class:`Report`;
- :mod:`~caspl_plugin.report.render`: the tables as CSV and Markdown files, and the PNG charts;

with :mod:`~caspl_plugin.report.table` (a :class:`Table` and its text, Markdown and CSV forms) and
:mod:`~caspl_plugin.report.charts`, the charts of the tables (the demos' charts too): one style,
matplotlib imported there only.

Imports data and files only.
"""
from .aggregate import (
    FLAG_KINDS,
    IMAGENET_VARIANTS,
    TRANSFER_DATASETS,
    Flag,
    Group,
    Report,
    Stats,
    ZeroShotReference,
    base2new_delta,
    base2new_overview,
    base2new_table,
    build_report,
    comparison_pairs,
    few_shot_table,
    harmonic_mean,
    read_zeroshot_csv,
    run_list_table,
    runs_table,
    seed_flags,
    short_labels,
    xd_table,
    zero_shot_flags,
)
from .parse import (
    LAYOUTS,
    LOG_FILE,
    LogSummary,
    Run,
    RunKey,
    backbone_of,
    dataset_key,
    discover_runs,
    is_zero_shot,
    match_layout,
    parse_log,
    read_run,
)
from .charts import MatplotlibMissing, report_charts
from .render import save_charts, write_tables
from .table import Table, Value

__all__ = [
    "FLAG_KINDS", "IMAGENET_VARIANTS", "LAYOUTS", "LOG_FILE", "TRANSFER_DATASETS",
    "Flag", "Group", "LogSummary", "MatplotlibMissing", "Report", "Run", "RunKey", "Stats", "Table", "Value",
    "ZeroShotReference",
    "backbone_of", "base2new_delta", "base2new_overview", "base2new_table", "build_report", "comparison_pairs",
    "dataset_key", "discover_runs", "few_shot_table", "harmonic_mean", "is_zero_shot", "match_layout",
    "parse_log", "read_run", "read_zeroshot_csv", "report_charts", "run_list_table", "runs_table", "save_charts",
    "seed_flags", "short_labels", "write_tables", "xd_table", "zero_shot_flags",
]
