"""Writing a training command's run folder (``NAME.run/`` beside ``NAME.safetensors``; the format is
:mod:`caspl_plugin.report.records`): the resolved options first, the log while it runs, the
per-epoch metrics and the result at the end. Rank 0 writes; every file but the log atomically."""
from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Optional

from caspl_plugin.files import atomic_write
from caspl_plugin.report.records import (
    CONFIG_FILE,
    FEWSHOT_FOLDER,
    LOG_FILE,
    METRICS_CSV,
    METRICS_JSON,
    RESULT_FILE,
    RESULT_FORMAT,
    run_folder,
)

from .common import SAY_LOGGER


class RunRecord:
    """The run folder of ``output`` for ``command`` with ``options`` (the resolved config mapping).
    Use as a context manager around the run: the log is written while it is open."""

    def __init__(self, output, command: str, options: dict):
        self.folder = run_folder(output)
        self.command, self.options = command, options
        self._handler: Optional[logging.Handler] = None

    def __enter__(self) -> "RunRecord":
        import yaml

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / CONFIG_FILE, yaml.safe_dump(self.options, sort_keys=False, allow_unicode=True))
        handler = logging.FileHandler(self.folder / LOG_FILE, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        for logger in (logging.getLogger("caspl_plugin"), SAY_LOGGER):
            logger.addHandler(handler)
        self._handler = handler
        return self

    def __exit__(self, *exc) -> None:
        if self._handler is not None:
            for logger in (logging.getLogger("caspl_plugin"), SAY_LOGGER):
                logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def write_metrics(self, report) -> None:
        """Every epoch's mean loss and metrics (the engine's :class:`~caspl_plugin.engine.LoopReport`)."""
        epochs = [{"epoch": i + 1, "loss": loss, **{k: v for k, v in metrics.items() if k != "loss"}}
                  for i, (loss, metrics) in enumerate(zip(report.epoch_losses, report.epoch_metrics or [{}] * len(report.epoch_losses)))]
        atomic_write(self.folder / METRICS_JSON, json.dumps({"epochs": epochs, "steps": report.steps,
                                                             "seconds": report.seconds}, indent=2) + "\n")
        columns = list(dict.fromkeys(k for row in epochs for k in row)) or ["epoch", "loss"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(epochs)
        atomic_write(self.folder / METRICS_CSV, buffer.getvalue())

    def write_result(self, **result) -> None:
        """What the run was and how it evaluated (``evaluation``: accuracy, or base / novel / hm)."""
        document = {"format": RESULT_FORMAT, "command": self.command, **result}
        atomic_write(self.folder / RESULT_FILE, json.dumps(document, indent=2) + "\n")

    def fewshot_split(self, shots: int, seed: int) -> Path:
        """Where the run keeps the few-shot split it trained on."""
        return self.folder / FEWSHOT_FOLDER / f"shot_{shots}-seed_{seed}.json"


def run_record(output, command: str, args):
    """The run folder of ``output`` on rank 0, with the run's resolved options; None on the other
    ranks of a torchrun job (a context manager either way)."""
    import contextlib

    from caspl_plugin import distributed

    from .options import resolved_options

    if not distributed.is_main():
        return contextlib.nullcontext(None)
    return RunRecord(output, command, resolved_options(args._parser, args))
