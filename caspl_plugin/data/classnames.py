"""The one reader of class-name files (one class name per line), used by every command.

Rules:

- UTF-8, with or without a byte-order mark (``utf-8-sig``); any other encoding is an error that
  names the file, the encoding expected and where decoding failed.
- Any line ending (``\\n``, ``\\r\\n``, ``\\r``); surrounding whitespace is stripped; blank lines
  are skipped.
- A line whose first character (after the whitespace) is ``#`` is a **comment** and is skipped; the
  number of comment lines is logged. To name a class that starts with ``#``, write ``\\#name``.
- A name holding a control character (NUL, tab, ...; Unicode category ``Cc``) or a bidirectional
  embedding, override or isolate (U+202A..U+202E, U+2066..U+2069: they reorder how the text around
  them is shown, so a printed label would not read as stored) is an error
  (:func:`caspl_plugin.names.class_name_problem`, the same rule wherever a class name is read or stored).
- Nothing else is dropped: a name made only of invisible characters (zero-width spaces, joiners,
  BOMs) is an error, and so are duplicates after the normalisation the text
  encoder sees: underscores become spaces (as in the prompts), then open_clip's tokenizer
  cleaning (``ftfy``, HTML unescaping, whitespace collapsing, lower case); invisible characters
  are ignored when comparing.

Errors are :class:`ClassNamesError` (a ``ValueError``) naming the file and the line number.
"""
from __future__ import annotations

import logging
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from ..files import NotUTF8Error, read_utf8
from ..names import BIDI_CONTROLS, class_name_problem

__all__ = ["BIDI_CONTROLS", "ClassNamesError", "ClassNamesFile", "check_class_names", "class_name_key",
           "class_name_problem", "read_class_names", "read_class_names_file"]

logger = logging.getLogger(__name__)

COMMENT = "#"
ESCAPED_COMMENT = "\\#"
_INVISIBLE_CATEGORIES = {"Cf", "Cc", "Zs", "Zl", "Zp", "Cn", "Co", "Cs"}


def check_class_names(names, where: str) -> list[str]:
    """``names`` if every one passes :func:`class_name_problem`, else :class:`ClassNamesError` naming
    ``where`` and the position of the first bad name."""
    for i, name in enumerate(names):
        reason = class_name_problem(name)
        if reason:
            raise ClassNamesError(f"{where}: class name {i}: {reason}")
    return list(names)


class ClassNamesError(ValueError):
    """A class-names file that cannot be used (the message names the file and line)."""


@dataclass(frozen=True)
class ClassNamesFile:
    """The class names of a file, with how many comment lines it had."""

    path: str
    names: list[str]
    comments: int


def _invisible(name: str) -> bool:
    return all(unicodedata.category(ch) in _INVISIBLE_CATEGORIES for ch in name)


def class_name_key(name: str) -> str:
    """What the text encoder sees of ``name``: underscores as spaces, open_clip's cleaning, lower case,
    invisible characters removed. Two names with the same key are the same class to the model."""
    from open_clip.tokenizer import basic_clean, whitespace_clean

    text = whitespace_clean(basic_clean(name.replace("_", " "))).lower()
    return "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE_CATEGORIES or ch == " ").strip()


def read_class_names_file(path: Union[str, os.PathLike], *, min_classes: int = 1, purpose: str = "") -> ClassNamesFile:
    """Read and check a class-names file (see the module docstring); ``min_classes`` with ``purpose``
    (e.g. "phase 1 needs at least 2 classes: ...") refuses files with too few names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Class-names file not found: {path}")
    try:
        text = read_utf8(path)
    except NotUTF8Error as error:
        raise ClassNamesError(f"{error}; expected a UTF-8 file with one class name per line: save it as UTF-8") from None
    names: list[str] = []
    comments = 0
    first_line: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name.startswith(COMMENT):
            comments += 1
            continue
        if name.startswith(ESCAPED_COMMENT):
            name = name[1:]
        reason = class_name_problem(name)
        if reason:
            raise ClassNamesError(f"{path}, line {number}: {reason}")
        if _invisible(name) or not class_name_key(name):
            raise ClassNamesError(
                f"{path}, line {number}: the class name {name!r} is made of invisible characters only"
            )
        key = class_name_key(name)
        if key in first_line:
            other_line, other = first_line[key]
            raise ClassNamesError(
                f"{path}, line {number}: duplicate class name: {name!r} duplicates {other!r} (line {other_line}); "
                f"both read as {key!r} to the text encoder"
            )
        first_line[key] = (number, name)
        names.append(name)
    if not names:
        raise ClassNamesError(f"Class-names file {path} is empty: expected one class name per line")
    if len(names) < min_classes:
        raise ClassNamesError(
            f"{path} has {len(names)} class name(s); {purpose or f'at least {min_classes} are needed'}"
        )
    logger.info(
        "Read %d class names from %s (%d comment line(s) starting with '#' skipped)", len(names), path, comments
    )
    return ClassNamesFile(str(path), names, comments)


def read_class_names(path: Union[str, os.PathLike], *, min_classes: int = 1, purpose: str = "") -> list[str]:
    """The class names of a file, one per line (rules in the module docstring)."""
    return read_class_names_file(path, min_classes=min_classes, purpose=purpose).names


def read_folder_class_names(path: Union[str, os.PathLike]) -> dict[str, str]:
    """An ImageNet-style ``classnames.txt`` (``<folder> <class name>`` per line) as folder -> class
    name, in file order; every name passes :func:`~caspl_plugin.names.class_name_problem`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Class-name file not found: {path} (expected lines '<folder> <class name>')")
    classnames: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        folder, _, classname = line.strip().partition(" ")
        if not classname:
            raise ClassNamesError(f"{path}, line {number}: expected '<folder> <class name>', got {line!r}")
        reason = class_name_problem(classname)
        if reason:
            raise ClassNamesError(f"{path}, line {number}: {reason}")
        classnames[folder] = classname
    return classnames
