"""``caspl demo``: CasPL end to end on the embedded toy domain and tiny pre-trained CLIPs."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="folder for the result table (Markdown, CSV) and chart")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="phase-2 seeds (default 1 2 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from caspl_plugin.demo import DemoSettings, format_table, run_demo, write_outputs

    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds must be distinct, got {args.seeds}")
    settings = DemoSettings.quick(seeds=tuple(args.seeds or (1,))) if args.quick else DemoSettings(seeds=tuple(args.seeds or (1, 2, 3)))
    result = run_demo(settings, progress=not args.no_progress)
    print(format_table(result))
    paths = write_outputs(result, Path(args.out), settings)
    print(f"\n{result.seconds['total']:.0f} s in all (boosting {result.seconds['boosting']:.0f} s, "
          f"adapting {result.seconds['adapting']:.0f} s); wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
