"""Names: the rule for text the package stores and prints back as a label (class names), and the
did-you-mean of every registry (methods, presets, datasets, templates, models).

A class name must be a non-empty string without a control character (Unicode category ``Cc``: NUL,
tab, ...) and without a bidirectional embedding, override or isolate (U+202A..U+202E,
U+2066..U+2069), which reorder how the text around them is shown, so a printed label would not read
as stored. Every layer applies it (class-name files, split files, artifacts, ONNX metadata) through
:func:`class_name_problem`; it imports nothing of the package.
"""
from __future__ import annotations

import difflib
import unicodedata
from typing import Iterable, Optional

__all__ = ["BIDI_CONTROLS", "class_name_problem", "did_you_mean"]

#: bidirectional embeddings, overrides and isolates (LRE, RLE, PDF, LRO, RLO, LRI, RLI, FSI, PDI)
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def class_name_problem(name) -> Optional[str]:
    """Why ``name`` cannot be a class name (None if it can): not a non-empty string, or holding a control
    character or a bidirectional embedding/override/isolate (named by code point)."""
    if not isinstance(name, str) or not name.strip():
        return f"expected a non-empty string, got {name!r}"
    for ch in name:
        if unicodedata.category(ch) == "Cc":
            return f"{name!r} holds the control character U+{ord(ch):04X}; class names are printable text"
        if ch in BIDI_CONTROLS:
            return (f"{name!r} holds the bidirectional control U+{ord(ch):04X} ({unicodedata.name(ch)}), which reorders "
                    "how the text is shown; class names cannot hold U+202A..U+202E or U+2066..U+2069")
    return None


def did_you_mean(name, known: Iterable[str], n: int = 3) -> str:
    """`` Did you mean A or B?`` for the known names closest to ``name`` (case-insensitive), or ''."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.5)
    return f" Did you mean {' or '.join(lowered[c] for c in close)}?" if close else ""
