"""Reading finished Dassl runs: their logs and the folders they sit in.

A run's accuracy is read the way CoOp's ``parse_test_res.py`` reads it: the last ``* accuracy: X%``
after the end signal, ``Finish training`` for a training run and ``=> result`` for an eval-only run
(a log without ``epoch [e/E]`` lines). Dassl never overwrites a log: a second run in the same folder
writes ``log.txt-YYYY-MM-DD-HH-MM-SS``; the newest log with an accuracy is used.

Runs are found by walking the root for logs and reading the folders between the root and the log
(:data:`LAYOUTS`); folders above the protocol folder name an *experiment*, kept apart in the tables.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Iterable, Optional, Sequence

from caspl_plugin.data.catalog import DATASETS

logger = logging.getLogger(__name__)

#: the folder layouts searched, relative to the root (an experiment prefix may precede each)
LAYOUTS = (
    "base2new/{train_base,test_new}/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>/log.txt",
    "few_shot/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>/log.txt",
    "<dataset>/<trainer>/<cfg>_<K>shots[/...]/seed<S>/log.txt (CoOp few-shot)",
    "evaluation/<trainer>/<cfg>_<K>shots/<dataset>/seed<S>/log.txt (CoOp cross-dataset test)",
    "xd/{train,test}/<dataset>/shots_<K>/<trainer>/<cfg>/seed<S>/log.txt",
    "boosting/<dataset>/<cfg>/seed<S>/log.txt (phase 1)",
    "ZeroshotCLIP/<cfg>/<dataset>/log.txt (CoOp zero-shot)",
)

LOG_FILE = re.compile(r"^log\.txt(?:-(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}))?$")
_SEED_DIR = re.compile(r"^seed_?(\d+)$")
_SHOTS_DIR = re.compile(r"^shots_(\d+)$")
_COOP_SHOTS_DIR = re.compile(r"^(.+)_(\d+)shots$")
_ACCURACY = re.compile(r"\* accuracy: (\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)%")
_TOTAL = re.compile(r"\* total: ([\d,]+)")
_CORRECT = re.compile(r"\* correct: ([\d,]+)")
_EPOCH = re.compile(r"epoch \[(\d+)/(\d+)\]")
_BEST_SAVED = re.compile(r"saved to \"?\S*model-best\.pth\.tar")
_BEST_LOADED = re.compile(r"model-best\.pth\.tar\S*\s.*\(epoch ?= ?(\d+)")
_BACKBONE = re.compile(r"^(rn\d+(?:x\d+)?|vit_[a-z]\d+(?:_\d+)?)")
END_OF_TRAINING, RESULT = "Finish training", "=> result"

_DATASET_ALIASES = {
    re.sub(r"[^a-z0-9]", "", alias.lower()): spec.config
    for spec in DATASETS.values()
    for alias in (spec.name, spec.config, spec.dataset_dir)
}


def dataset_key(name: str) -> str:
    """The config stem of a dataset (``OxfordPets``, ``oxford_pets`` -> ``oxford_pets``); unknown names as given."""
    return _DATASET_ALIASES.get(re.sub(r"[^a-z0-9]", "", name.lower()), name)


def backbone_of(cfg: str) -> str:
    """The backbone a config name starts with (``vit_b16_c2_ep20...`` -> ``vit_b16``), or ``""``."""
    match = _BACKBONE.match(PurePosixPath(cfg).name.lower()) if cfg else None
    return match.group(1) if match else ""


def is_zero_shot(trainer: str) -> bool:
    return trainer.lower().startswith("zeroshotclip")


# --------------------------------------------------------------------------------------- logs


@dataclass
class LogSummary:
    """What one Dassl log says about its run."""

    status: str  # "ok" (accuracy found) | "no-test" (finished, no test) | "unfinished"
    accuracy: Optional[float] = None
    total: Optional[int] = None
    correct: Optional[int] = None
    eval_only: bool = False
    last_epoch: Optional[int] = None
    max_epoch: Optional[int] = None
    best_epoch: Optional[int] = None  # epoch of the deployed best-val checkpoint (TEST.FINAL_MODEL best_val)
    reason: str = ""


def _count(match: re.Match) -> int:
    return int(match.group(1).replace(",", ""))


def parse_log(text: str) -> LogSummary:
    """Read a Dassl ``log.txt``: final accuracy, epochs trained, best-val epoch, completeness."""
    finished = result_seen = False
    final = after_result = None  # (accuracy, total, correct) after "Finish training" / the first "=> result"
    total = correct = epoch = max_epoch = best_saved = best_loaded = None
    for line in text.splitlines():
        line = line.strip()
        if line == END_OF_TRAINING:
            finished = True
        elif line == RESULT:
            result_seen, total, correct = True, None, None
        elif (match := _EPOCH.match(line)) is not None:
            epoch, max_epoch = int(match.group(1)), int(match.group(2))
        elif (match := _BEST_LOADED.search(line)) is not None:
            best_loaded = int(match.group(1))
        elif _BEST_SAVED.search(line):
            best_saved = epoch
        elif (match := _TOTAL.match(line)) is not None:
            total = _count(match)
        elif (match := _CORRECT.match(line)) is not None:
            correct = _count(match)
        elif (match := _ACCURACY.search(line)) is not None:
            value = (float(match.group(1)), total, correct)
            final = value if finished else final
            after_result = value if result_seen else after_result
    summary = LogSummary("unfinished", last_epoch=epoch, max_epoch=max_epoch,
                         best_epoch=best_loaded if best_loaded is not None else best_saved)
    if finished:
        if final is None:
            summary.status, summary.reason = "no-test", f"no '* accuracy' line after '{END_OF_TRAINING}'"
            return summary
        summary.status, (summary.accuracy, summary.total, summary.correct) = "ok", final
    elif epoch is not None:
        summary.reason = f"training stopped at epoch {epoch}/{max_epoch}, no '{END_OF_TRAINING}'"
    elif after_result is not None:
        summary.status, summary.eval_only = "ok", True
        summary.accuracy, summary.total, summary.correct = after_result
    else:
        summary.reason = f"no '{END_OF_TRAINING}' and no '{RESULT}' followed by an accuracy"
    return summary


# ------------------------------------------------------------------------------------ layouts


@dataclass(frozen=True)
class RunKey:
    """Where a run sits in the protocol grid."""

    protocol: str  # "base2new" | "few_shot" | "xd" | "boosting" | "zeroshot"
    split: str  # base2new: "base" | "new"; xd: "train" | "test"; otherwise "all"
    dataset: str
    shots: Optional[int]
    trainer: str
    cfg: str
    experiment: str = ""  # folders between the root and the protocol folder
    seed: Optional[int] = None

    @property
    def class_split(self) -> str:
        """The classes the accuracy is measured on: ``base``, ``new`` or ``all``."""
        return self.split if self.protocol == "base2new" else "all"


def _protocol_key(folder: str, rest: Sequence[str]) -> Optional[RunKey]:
    """The key of a run whose path continues with ``rest`` below the folder ``folder``."""
    splits = {"base2new": {"train_base": "base", "test_new": "new"}, "xd": {"train": "train", "test": "test"}}
    if folder in splits and len(rest) >= 5 and rest[0] in splits[folder] and _SHOTS_DIR.match(rest[2]):
        return RunKey(folder, splits[folder][rest[0]], dataset_key(rest[1]), int(rest[2][6:]), rest[3], "/".join(rest[4:]))
    if folder == "few_shot" and len(rest) >= 4 and _SHOTS_DIR.match(rest[1]):
        return RunKey(folder, "all", dataset_key(rest[0]), int(rest[1][6:]), rest[2], "/".join(rest[3:]))
    if folder == "boosting" and len(rest) >= 2:
        return RunKey(folder, "all", dataset_key(rest[0]), None, "BoostDistill", "/".join(rest[1:]))
    return None


def match_layout(parts: Sequence[str], root_depth: int = 0) -> Optional[RunKey]:
    """The :class:`RunKey` of a run folder given as path components (``parts[:root_depth]`` lie above
    the report root: they may hold the protocol folder but never name an experiment)."""

    def experiment(index: int) -> str:
        return "/".join(parts[root_depth:index])

    seed = _SEED_DIR.match(parts[-1]) if parts else None
    if seed is None:
        if len(parts) >= 3 and is_zero_shot(parts[-3]):
            return RunKey("zeroshot", "all", dataset_key(parts[-1]), None, parts[-3], parts[-2], experiment(len(parts) - 3))
        return None
    body, seed_value = parts[:-1], int(seed.group(1))
    for index in range(len(body) - 1, -1, -1):  # the protocol folder nearest to the run wins
        key = _protocol_key(body[index], body[index + 1:])
        if key is not None:
            return replace(key, experiment=experiment(index), seed=seed_value)
    for index in range(len(body) - 1, 1, -1):
        coop = _COOP_SHOTS_DIR.match(body[index])
        if coop is None:
            continue
        cfg, shots, extra = coop.group(1), int(coop.group(2)), list(body[index + 1:])
        if body[index - 2] == "evaluation" and extra:  # CoOp's cross-dataset evaluation layout
            dataset = extra.pop(0)
            return RunKey("xd", "test", dataset_key(dataset), shots, body[index - 1], "/".join([cfg] + extra),
                          experiment(index - 2), seed_value)
        return RunKey("few_shot", "all", dataset_key(body[index - 2]), shots, body[index - 1], "/".join([cfg] + extra),
                      experiment(index - 2), seed_value)
    return None


# --------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One run folder: its key (``None`` when the layout is unknown) and what its log says."""

    path: str  # the run folder relative to the root, POSIX style
    key: Optional[RunKey]
    log: Optional[str] = None  # file name of the log used
    summary: Optional[LogSummary] = None
    problem: str = ""  # why the run could not be parsed
    note: str = ""

    @property
    def status(self) -> str:
        return "unparsed" if self.problem or self.summary is None else self.summary.status

    @property
    def accuracy(self) -> Optional[float]:
        return self.summary.accuracy if self.summary and not self.problem else None

    @property
    def cell(self) -> str:
        """The run's folder without its seed folder."""
        return str(PurePosixPath(self.path).parent) if self.key and self.key.seed is not None else self.path


def _newest_first(names: Iterable[str]) -> list[str]:
    """Dassl's logs of one folder, newest first (``log.txt`` is the first run, timestamped ones later)."""
    return sorted(names, key=lambda name: LOG_FILE.match(name).group(1) or "", reverse=True)


def read_run(directory: Path, log_names: Iterable[str]) -> tuple[Optional[str], Optional[LogSummary], str, str]:
    """``(log name, summary, problem, note)`` from the newest complete log of a run folder."""
    readable: list[tuple[str, LogSummary]] = []
    problems = []
    for name in _newest_first(log_names):
        try:
            text = (directory / name).read_bytes().decode("utf-8", errors="replace")
        except OSError as error:
            problems.append(f"cannot read {name}: {error.strerror or error}")
            continue
        readable.append((name, parse_log(text)))
    if not readable:
        return None, None, "; ".join(problems), ""
    rank = {"ok": 0, "no-test": 1, "unfinished": 2}
    chosen = min(readable, key=lambda item: rank[item[1].status])  # min keeps the newest among equals
    skipped = [name for name, _ in readable[: readable.index(chosen)]]
    note = f"newer log(s) {', '.join(skipped)} incomplete; used {chosen[0]}" if skipped else ""
    return chosen[0], chosen[1], "", "; ".join(filter(None, [note] + problems))


def discover_runs(root: str | os.PathLike) -> list[Run]:
    """Every folder under ``root`` that holds a Dassl log, parsed (unknown layouts kept, with the reason)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory (expected the output folder of Dassl runs)")
    above = root.resolve().parts
    runs = []
    for directory, folders, files in os.walk(root):
        folders.sort()
        logs = [name for name in files if LOG_FILE.match(name)]
        if not logs:
            continue
        relative = Path(directory).relative_to(root)
        key = match_layout(above + relative.parts, root_depth=len(above))
        log, summary, problem, note = read_run(Path(directory), logs)
        if key is None:
            problem = "its folders match none of the known layouts (listed by `caspl report --help`)"
        runs.append(Run(relative.as_posix(), key, log, summary, problem, note))
    logger.debug("found %d run folders under %s", len(runs), root)
    return runs
