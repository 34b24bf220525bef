"""The embedded demos (``caspl demo``): CasPL end to end on the toy domain with the shipped tiny CLIPs.

:mod:`.per_domain` is ``caspl demo`` (one domain, both phases, four phase-2 models over seeds),
:mod:`.universal` is ``caspl demo --universal`` (one phase 1 over several domains, measured on a
held-out one). Both build on :mod:`.runs` (settings, toy data, accuracy, the two phases on the
engine) and :mod:`.tables` (tables and the chart). Imports the library's front doors (boosting,
methods, engine) and report's charts; nothing imports the demos but the CLI.
"""
from .per_domain import run_demo, write_outputs
from .runs import (
    TEMPLATE, DemoResult, DemoSettings, TestSplit, accuracy, adapt_toy_method, base_novel_accuracy, distill_toy_boosting,
    normalise,
)
from .tables import chart, chart_or_skip, csv_text, format_table, markdown_table, seed_caption, table_rows
from .universal import UniversalResult, UniversalSettings, run_universal_demo, verdict, write_universal_outputs

__all__ = [
    "run_demo", "write_outputs", "TEMPLATE", "DemoResult", "DemoSettings", "TestSplit", "accuracy", "adapt_toy_method",
    "base_novel_accuracy", "distill_toy_boosting", "normalise", "chart", "chart_or_skip", "csv_text", "format_table", "markdown_table",
    "seed_caption", "table_rows", "UniversalResult", "UniversalSettings", "run_universal_demo", "verdict",
    "write_universal_outputs",
]
