"""The ``caspl`` command. Each subcommand is a module of this package with ``add_arguments(parser)``
and ``run(args) -> int``; :data:`COMMANDS` maps command names to module names (imported lazily, so
``caspl --help`` stays fast and a broken optional command never breaks the others).

The top layer: it may import every package; nothing imports it.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Optional, Sequence

from .common import CommandError  # noqa: F401  (caspl_plugin.cli.CommandError)

#: command name -> (module under caspl_plugin.cli, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "CasPL end to end on the embedded toy domain with tiny pre-trained CLIPs (about a minute)"),
    "distill": ("distill", "phase 1: learn boosting prompts from a zero-shot teacher on unlabeled images"),
    "adapt": ("adapt", "phase 2 without Dassl: train a method (CasPL_<Method> with --boosting) on labeled images, evaluate, save a classifier"),
    "inspect": ("inspect_cmd", "print the metadata of a prompt artifact"),
    "teacher-cache": ("teacher_cache", "precompute the teacher's features of K augmented views per image (teacher-free phase 1)"),
    "import-official": ("import_official", "convert the authors' phase-1 checkpoint into a boosting artifact"),
    "configs": ("configs_cmd", "print where the experiment configs and scripts are, or copy them into a project"),
    "classify": ("classify", "top-k classes of images with a classifier saved after phase 2"),
    "export": ("export", "a classifier as one ONNX graph (fp32 or int8) for onnxruntime"),
    "report": ("report_cmd", "tables (base-to-novel, few-shot, cross-dataset) and flags from finished Dassl runs' logs"),
    "models": ("models_cmd", "the CLIP models caspl knows: which can be the student, their pretrained tags, weights found"),
}


#: commands that compute on the CPU or GPU: they take ``--threads``
COMPUTING = ("demo", "distill", "adapt", "teacher-cache", "classify", "export")


#: Exit code when stdout is closed early (``caspl inspect --json | head``): 128 + SIGPIPE.
BROKEN_PIPE_EXIT = 141


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``caspl`` parser; only ``command``'s module is imported to add its arguments."""
    from caspl_plugin.version import __version__

    parser = argparse.ArgumentParser(prog="caspl", description="Cascade Prompt Learning (CasPL) for CLIP.")
    parser.add_argument("--version", action="version", version=f"caspl-plugin {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from .options import HelpFormatter, add_config_argument

    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == command:
            module = importlib.import_module(f"{__name__}.{module_name}")
            module.add_arguments(command_parser)
            command_parser.set_defaults(_module=module, _parser=command_parser)
            if getattr(module, "CONFIGURABLE", False):
                add_config_argument(command_parser)
            if name in COMPUTING:
                command_parser.add_argument(
                    "--threads", type=_threads, metavar="N",
                    help="CPU threads for torch (default: the CPUs this process may use less those busy right now, "
                         "at least 1; or $CASPL_THREADS). On a shared server, 1 per process avoids stalls")
    return parser


def _threads(text: str) -> int:
    from caspl_plugin.threads import parse_threads

    try:
        return parse_threads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).replace("--threads expects ", "expected ")) from None


_WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def error_text(error: BaseException) -> str:
    """The message of ``error``; for an error re-raised from a DataLoader worker process (whose message
    carries the worker's traceback), the original message only."""
    import re

    text = str(error)
    if _WORKER_TRACEBACK in text:
        tail = text.split(_WORKER_TRACEBACK, 1)[1]
        found = re.search(rf"^(?:[\w.]+\.)?{re.escape(type(error).__name__)}: (.*)", tail, re.S | re.M)
        if found:
            text = found.group(1).strip()
    return text


def _command_in(argv: Sequence[str]) -> Optional[str]:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one ``caspl`` command; expected failures print one line ``caspl <cmd>: error: ...``:
    bad input -> exit 2, other ``OSError`` (permission, disk full, I/O) -> 1, Ctrl-C -> 130 with
    where training stopped, stdout closed by the reader -> 141 quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # the reader went away (``| head``): point stdout at devnull so the flush at exit is quiet
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_EXIT


def _main(argv: Optional[Sequence[str]]) -> int:
    from .runguard import INTERRUPTED_EXIT, describe_os_error, interrupt_message

    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_in(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("caspl_plugin").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        from .options import apply_config, explicit_options

        args._explicit = explicit_options(args._parser, argv[argv.index(command) + 1:])
        if getattr(args, "config", None):
            args._explicit |= apply_config(args._parser, args, args._explicit)
        if args.command in COMPUTING:
            from caspl_plugin.threads import configure_threads

            configure_threads(args.threads, local_processes=int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
        return int(args._module.run(args) or 0)
    except (CommandError, FileNotFoundError, ValueError) as error:
        print(f"caspl {args.command}: error: {error_text(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except OSError as error:
        print(f"caspl {args.command}: error: {describe_os_error(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interruption:
        print(f"caspl {args.command}: {interrupt_message(interruption)}", file=sys.stderr)
        return INTERRUPTED_EXIT


if __name__ == "__main__":
    sys.exit(main())
