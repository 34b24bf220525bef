"""A command's options: which were given on the command line, ``--config FILE`` (YAML or JSON, keys =
the options' names, e.g. ``epochs``, ``batch_size``, ``student``), and the resolved options a run
records. Defaults < the config file < flags given on the command line."""
from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any, Sequence

from ..files import NotUTF8Error, read_utf8
from .common import CommandError

#: options that describe how a run is invoked, not what it computes: never read from or written to a config
NOT_CONFIG = frozenset({"help", "config", "resume", "threads", "verbose", "command", "version"})


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help with every option's default, where it has one worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if "%(default)" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="options from a YAML or JSON file: keys are the options' names without '--' (batch_size, "
                             "student, ...), e.g. a run folder's config.yaml; options given on the command line win")


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options given in ``argv`` (a command's own arguments)."""
    saved = [(action, action.default, action.required) for action in parser._actions]
    for action, _, _ in saved:
        action.default, action.required = argparse.SUPPRESS, False
    try:
        given, _ = parser.parse_known_args(list(argv))
    finally:
        for action, default, required in saved:
            action.default, action.required = default, required
    return set(vars(given))


def configurable_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in NOT_CONFIG and a.dest != argparse.SUPPRESS}


def read_config(path: str) -> dict:
    """A config file's mapping (YAML or JSON); a clear error naming the file otherwise."""
    try:
        text = read_utf8(path)
    except OSError as error:
        raise CommandError(f"--config {path}: cannot read it ({error.strerror or error})") from None
    except NotUTF8Error as error:
        raise CommandError(f"--config {error}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # yaml/json parse errors: one line
        raise CommandError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                           f"({' '.join(str(error).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CommandError(f"--config {path}: expected a mapping of option names to values, got {type(data).__name__}")
    return data


def _convert(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    def one(item):
        if action.type is not None and isinstance(item, str):
            try:
                item = action.type(item)
            except argparse.ArgumentTypeError as error:
                raise CommandError(f"--config {path}: {key}: {error}") from None
            except (TypeError, ValueError):
                kind = getattr(action.type, "__name__", "value")
                raise CommandError(f"--config {path}: {key}: invalid {kind} value {item!r}") from None
        elif action.type in (int, float) and isinstance(item, (int, float)) and not isinstance(item, bool):
            item = action.type(item)
        if action.choices is not None and item not in action.choices:
            raise CommandError(f"--config {path}: {key}: {item!r} is not one of {', '.join(map(str, action.choices))}")
        return item

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise CommandError(f"--config {path}: {key}: expected true or false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(action, argparse._AppendAction):
        if not isinstance(value, list):
            raise CommandError(f"--config {path}: {key}: expected a list, got {value!r}")
        return [[one(v) for v in item] if isinstance(item, list) else one(item) for item in value]
    if action.nargs not in (None, "?"):
        if not isinstance(value, list):
            raise CommandError(f"--config {path}: {key}: expected a list, got {value!r}")
        return [one(v) for v in value]
    if isinstance(value, (list, dict)):
        raise CommandError(f"--config {path}: {key}: expected one value, got {value!r}")
    return one(value)


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace, explicit: set[str]) -> set[str]:
    """Set ``args`` from ``args.config`` for every option not given on the command line; unknown keys
    are refused with a suggestion. Returns the options the file gave (they count as given)."""
    path = str(args.config)
    actions = configurable_actions(parser)
    given = set()
    for key, value in read_config(path).items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            close = difflib.get_close_matches(dest, list(actions), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise CommandError(f"--config {path}: unknown option {key!r}{hint} (known: {', '.join(sorted(actions))})")
        if dest not in explicit:
            setattr(args, dest, _convert(actions[dest], dest, value, path))
            given.add(dest)
    return given


def resolved_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The options of a run as a config mapping (JSON values), re-runnable with ``--config``."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)

    return {dest: plain(getattr(args, dest, None)) for dest in configurable_actions(parser)}
