"""A result table: its rows and columns, shown as plain text, Markdown or CSV."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Optional, Sequence

Value = Optional[object]  # str | int | float | None


@dataclass
class Table:
    """A result table. A column ``x_std`` right after ``x`` is shown as ``x ± x_std``; the CSV keeps both."""

    name: str  # file stem
    title: str
    columns: list[str]
    rows: list[list[Value]]
    kind: str = ""
    notes: list[str] = field(default_factory=list)
    printed: bool = True
    label: str = ""  # the trainer's short name among the report's tables of its kind (chart legends)

    def column(self, name: str) -> list[Value]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def display(self) -> tuple[list[str], list[list[str]], list[bool]]:
        """Headers, formatted cells and which columns are numeric, with ``x_std`` merged into ``x``."""
        merged = [i for i, name in enumerate(self.columns) if not (i and name == self.columns[i - 1] + "_std")]
        headers = [self.columns[i] for i in merged]
        cells, numeric = [], [False] * len(merged)
        for row in self.rows:
            shown = []
            for j, i in enumerate(merged):
                value = row[i]
                has_std = i + 1 < len(self.columns) and self.columns[i + 1] == self.columns[i] + "_std"
                numeric[j] = numeric[j] or isinstance(value, (int, float))
                std = row[i + 1] if has_std else None
                shown.append(_format(value) + (f" ± {std:.2f}" if std is not None and value is not None else ""))
            cells.append(shown)
        return headers, cells, numeric

    def to_text(self) -> str:
        headers, cells, numeric = self.display()
        widths = [max(len(text) for text in column) for column in zip(headers, *cells)]

        def line(texts: Sequence[str]) -> str:
            return "  ".join(t.rjust(w) if n else t.ljust(w) for t, w, n in zip(texts, widths, numeric)).rstrip()

        body = [line(headers), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]
        return "\n".join([self.title] + body + [f"  note: {note}" for note in self.notes])

    def to_markdown(self) -> str:
        headers, cells, numeric = self.display()
        rows = [headers, ["---:" if n else "---" for n in numeric]] + cells
        body = ["| " + " | ".join(text.replace("|", "\\|") for text in row) + " |" for row in rows]
        return "\n".join([f"## {self.title}", ""] + body + [""] + [f"*{note}*" for note in self.notes]).rstrip() + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow(["" if value is None else repr(round(value, 6)) if isinstance(value, float) else value
                             for value in row])
        return buffer.getvalue()


def _format(value: Value) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)
