"""Run folders of ``caspl distill`` / ``caspl adapt``: the format, and reading them back.

Beside its output ``NAME.safetensors`` a training command keeps ``NAME.run/``:

- ``config.yaml``: the resolved options, re-runnable with ``--config`` (flags given on the command
  line win over it);
- ``log.txt``: what the run logged and printed;
- ``metrics.csv`` / ``metrics.json``: the mean loss and metrics of every epoch;
- ``result.json``: what the run was (command, method, dataset, shots, seed) and its final evaluation
  (``accuracy``, or ``base`` / ``novel`` / ``hm`` for base-to-novel);
- ``split_fewshot/`` (adapt): the few-shot split it trained on.

:func:`discover_run_records` finds them below a folder for ``caspl report``.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .table import Table

logger = logging.getLogger(__name__)

RUN_SUFFIX = ".run"
CONFIG_FILE = "config.yaml"
LOG_FILE = "log.txt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
RESULT_FILE = "result.json"
RESULT_FORMAT = "caspl-run"
FEWSHOT_FOLDER = "split_fewshot"


def run_folder(output: str | os.PathLike) -> Path:
    """The run folder of a command's output file: ``NAME.safetensors`` -> ``NAME.run``."""
    output = Path(output)
    return output.with_name(output.stem + RUN_SUFFIX)


@dataclass
class RunRecord:
    """One run folder read back (``result.json``)."""

    folder: Path
    command: str
    method: Optional[str] = None
    dataset: Optional[str] = None
    shots: Optional[int] = None
    seed: Optional[int] = None
    final_loss: Optional[float] = None
    evaluation: dict = field(default_factory=dict)


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_run_record(folder: str | os.PathLike) -> RunRecord:
    """The run folder's ``result.json``; ``ValueError`` naming the file and what is wrong."""
    path = Path(folder) / RESULT_FILE
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a readable run result ({error})") from None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT or not isinstance(result.get("command"), str):
        raise ValueError(f"{path}: not a caspl run result (expected format {RESULT_FORMAT!r} and a command)")
    evaluation = result.get("evaluation") if isinstance(result.get("evaluation"), dict) else {}
    text = lambda key: result.get(key) if isinstance(result.get(key), str) else None  # noqa: E731
    integer = lambda key: result.get(key) if isinstance(result.get(key), int) and not isinstance(result.get(key), bool) else None  # noqa: E731
    return RunRecord(
        folder=Path(folder), command=result["command"], method=text("method"), dataset=text("dataset"),
        shots=integer("shots"), seed=integer("seed"), final_loss=_number(result.get("final_loss")),
        evaluation={k: float(v) for k, v in evaluation.items() if _number(v) is not None},
    )


def discover_run_records(root: str | os.PathLike) -> list[RunRecord]:
    """Every run folder at or below ``root`` with a result (unreadable ones are logged and left out)."""
    root = Path(root)
    folders = [root] if (root / RESULT_FILE).is_file() and root.name.endswith(RUN_SUFFIX) else []
    folders += sorted(p.parent for p in root.rglob(f"*{RUN_SUFFIX}/{RESULT_FILE}"))
    records = []
    for folder in dict.fromkeys(folders):
        try:
            records.append(read_run_record(folder))
        except ValueError as error:
            logger.warning("%s", error)
    return records


def run_records_table(records: list[RunRecord], root: str | os.PathLike) -> Table:
    """One row per run folder: what it trained and how it evaluated."""
    rows = []
    for r in records:
        try:
            where = str(r.folder.relative_to(root)) if r.folder != Path(root) else r.folder.name
        except ValueError:
            where = str(r.folder)
        e = r.evaluation
        rows.append([where, r.command, r.method, r.dataset, r.shots, r.seed, e.get("accuracy"), e.get("base"),
                     e.get("novel"), e.get("hm"), r.final_loss])
    return Table("caspl_runs", "caspl distill / adapt runs (run folders)",
                 ["run", "command", "method", "dataset", "shots", "seed", "accuracy", "base", "novel", "HM", "final loss"],
                 rows, kind="runs")
