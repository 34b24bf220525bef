"""``caspl demo``: CasPL end to end on the embedded toy domain and tiny pre-trained CLIPs.

``caspl demo --universal``: universal boosting prompts (one phase 1 for several toy domains),
measured on a held-out domain and on the seen ones (see :mod:`caspl_plugin.demo.universal`).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="folder for the result table (Markdown, CSV) and chart")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 1 2 3; --quick: 1): phase 2's, and with --universal phase 1's too")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--universal", action="store_true",
                        help="universal boosting prompts: trained on several toy domains, measured on a held-out one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct, got {args.seeds}")
    if args.universal:
        return _run_universal(args)
    from caspl_plugin.demo import DemoResult, DemoSettings, format_table, run_demo, write_outputs

    settings = DemoSettings.quick(seeds=tuple(args.seeds or (1,))) if args.quick else DemoSettings(seeds=tuple(args.seeds or (1, 2, 3)))
    result = DemoResult()
    with _keep_partial(result, lambda: write_outputs(result, Path(args.out), settings), lambda: format_table(result)):
        run_demo(settings, progress=not args.no_progress, result=result)
    print(format_table(result))
    paths = write_outputs(result, Path(args.out), settings)
    print(f"\n{result.seconds['total']:.0f} s in all (boosting {result.seconds['boosting']:.0f} s, "
          f"adapting {result.seconds['adapting']:.0f} s); wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


@contextlib.contextmanager
def _keep_partial(result, write, table, rows=lambda result: result.rows):
    """On Ctrl-C: the rows finished so far are printed and written, marked partial; then the
    interruption goes on (exit 130)."""
    try:
        yield
    except KeyboardInterrupt:
        finished = sum(len(row["base"]) for row in rows(result).values())
        if finished:
            result.partial = f"interrupted after {finished} finished run(s); the rows hold only those"
            print(table())
            paths = write()
            print("\npartial results written: " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
        raise


def _run_universal(args) -> int:
    from caspl_plugin.demo import format_table
    from caspl_plugin.demo import UniversalResult, UniversalSettings, run_universal_demo, verdict, write_universal_outputs

    seeds = tuple(args.seeds or ((1,) if args.quick else (1, 2, 3)))
    settings = UniversalSettings.quick(seeds=seeds) if args.quick else UniversalSettings(seeds=seeds)
    result = UniversalResult()

    def tables() -> str:
        return f"held-out domain: {settings.held_out}\n{format_table(result.held_out)}\n\nseen domains\n{format_table(result.seen)}"

    with _keep_partial(result.held_out, lambda: write_universal_outputs(result, Path(args.out), settings), tables,
                       rows=lambda _: {**result.held_out.rows, **{f"seen {k}": v for k, v in result.seen.rows.items()}}):
        run_universal_demo(settings, progress=not args.no_progress, result=result)
    print(f"Universal boosting prompts: trained on {', '.join(settings.seen)}; held-out domain {settings.held_out}\n")
    print(f"held-out domain: {settings.held_out}")
    print(format_table(result.held_out))
    print("\nseen domains")
    print(format_table(result.seen))
    print("\n" + verdict(result))
    paths = write_universal_outputs(result, Path(args.out), settings)
    print(f"\n{result.seconds['total']:.0f} s in all; wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
