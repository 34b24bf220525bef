"""``caspl report OUTPUT_DIR``: tables of finished runs: the run folders of ``caspl distill`` /
``caspl adapt`` (``NAME.run/``) and Dassl runs (base-to-novel, few-shot, cross-dataset).

Prints the tables, lists suspicious runs, and writes every table as CSV and Markdown into ``--out``,
with a PNG chart of every results table when matplotlib is installed (base / novel / HM bars per
base-to-novel table, the HM overview and the comparisons; few-shot curves; cross-dataset / domain
generalisation bars; :mod:`caspl_plugin.report.charts`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from caspl_plugin.report import LAYOUTS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "\n".join(
        ["layouts searched under OUTPUT_DIR (any folder prefix names an experiment):"]
        + [f"  {layout}" for layout in LAYOUTS]
        + ["Dassl's timestamped logs (log.txt-YYYY-MM-DD-HH-MM-SS) count too: the newest complete one is used."])
    parser.add_argument("output_dir", help="root folder of the runs (Dassl OUTPUT_DIRs below it)")
    parser.add_argument("--out", help="folder for the CSV / Markdown / PNG files (default OUTPUT_DIR/report)")
    parser.add_argument("--zeroshot", metavar="FILE.csv",
                        help="zero-shot accuracies: columns dataset,accuracy[,split][,backbone]; split base|new|all")
    parser.add_argument("--expect-seeds", type=int, default=3, help="flag cells with fewer seeds")
    parser.add_argument("--baseline", action="append", default=[], metavar="TRAINER",
                        help="also compare every base-to-novel trainer against this one (repeatable); "
                             "CasPL_X is always compared with X")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the charts")


def run(args: argparse.Namespace) -> int:
    from caspl_plugin.report import LAYOUTS, build_report, discover_runs, read_zeroshot_csv, save_charts, write_tables
    from caspl_plugin.report.records import discover_run_records

    if args.expect_seeds < 1:
        raise CommandError(f"--expect-seeds must be >= 1, got {args.expect_seeds}")
    root = Path(args.output_dir)
    zeroshot = read_zeroshot_csv(args.zeroshot) if args.zeroshot else None
    runs = discover_runs(root)
    records = discover_run_records(root)
    if not runs and not records:
        raise CommandError(f"no run found under {root}: no caspl run folder (*.run/result.json) and no Dassl log.txt "
                           "in any of the layouts\n  " + "\n  ".join(LAYOUTS))
    report = build_report(runs, expect_seeds=args.expect_seeds, zeroshot=zeroshot, baselines=args.baseline,
                          records=records, root=str(root))
    for table in report.tables:
        if table.printed:
            print(table.to_text(), end="\n\n")
    print(report.summary())
    out = Path(args.out) if args.out else root / "report"
    written = write_tables(report, out)
    if not args.no_chart:
        from caspl_plugin.report.charts import MatplotlibMissing

        try:
            written += save_charts(report, out)
        except MatplotlibMissing as error:
            print(f"caspl report: warning: {error}", file=sys.stderr)
    print(f"wrote {len(written)} files to {out}")
    return 0
