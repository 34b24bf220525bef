"""``caspl configs``: where the experiment configs and scripts are, or copy them into a host project.

    caspl configs --path              # print the configs/ and scripts/ folders
    caspl configs --copy DEST         # copy configs/ and scripts/ into DEST (existing files kept)
    caspl configs --copy DEST --force # ... and overwrite existing files that differ

Exit status of ``--copy``: 0 when every file is in place, 1 when differing files were kept.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from caspl_plugin.cli.common import CommandError

_ENABLE_LINE = "import caspl_plugin; caspl_plugin.enable()"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--path", action="store_true", help="print the configs/ and scripts/ folders (default)")
    action.add_argument("--copy", metavar="DEST", help="copy configs/ and scripts/ into the project folder DEST")
    parser.add_argument("--force", action="store_true", help="with --copy: overwrite existing files that differ")


def _host_hint(dest: Path) -> str | None:
    """A reminder when DEST's train.py does not enable the plugin yet."""
    train_py = dest / "train.py"
    if not train_py.is_file():
        return (f"note: the scripts run {train_py} (a CoOp-style entry point); create it or set TRAIN_PY, "
                f"and enable the plugin in it: {_ENABLE_LINE}")
    if "caspl_plugin" not in train_py.read_text(encoding="utf-8", errors="replace"):
        return f"note: enable the plugin in {train_py} before its config is built: {_ENABLE_LINE}"
    return None


def run(args: argparse.Namespace) -> int:
    from caspl_plugin import resources

    if args.force and not args.copy:
        raise CommandError("--force only applies to --copy DEST")
    if not args.copy:
        print(f"configs: {resources.configs_dir()}")
        print(f"scripts: {resources.scripts_dir()}")
        return 0

    dest = Path(args.copy)
    try:
        report = resources.copy_resources(dest, force=args.force)
    except (NotADirectoryError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"{dest}: {len(report.copied)} copied, {len(report.overwritten)} overwritten, "
          f"{len(report.unchanged)} unchanged, {len(report.skipped)} kept (they differ)")
    for title, paths in (("overwritten", report.overwritten), ("kept (use --force to overwrite)", report.skipped)):
        if paths:
            print(f"{title}:")
            print("\n".join(f"  {path}" for path in paths))
    hint = _host_hint(dest)
    if hint:
        print(hint)
    return 1 if report.skipped else 0
