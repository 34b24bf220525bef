"""Result tables, comparisons and flags from parsed runs (:mod:`caspl_plugin.report.parse`).

Accuracies are averaged over seeds (mean ± population std, as ``parse_test_res.py``); base-to-novel
HM is ``2BN/(B+N)`` of the seed-averaged base and novel accuracies, and of the averages over
datasets for the Average row.

Flags (suspicious runs; nothing is dropped silently):

- ``unparsed``: the log could not be read, or its folders match none of the layouts;
- ``unfinished``: no accuracy after the end signal (the reason says where the log stops);
- ``epoch-1``: the deployed best-val checkpoint is from epoch 1 of several (the last
  ``model-best.pth.tar`` that Dassl saved or loaded was written during epoch 1, i.e. validation
  never improved after the first epoch), or a finished training log whose last ``epoch [e/E]``
  line has ``e == 1 < E``;
- ``below-zero-shot``: accuracy under the zero-shot accuracy of the same dataset, class split
  (base / new, else all classes) and backbone (the config name's prefix, e.g. ``vit_b16``), taken
  from ``ZeroshotCLIP`` runs in the tree or a ``--zeroshot`` CSV;
- ``missing-seed``: a cell (protocol, split, dataset, shots, trainer, config) whose seeds differ
  from the union of its trainer/config's seeds, or are fewer than expected. Zero-shot and boosting
  runs are deterministic / seed-1 by design and are not checked.
"""
from __future__ import annotations

import csv
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Optional, Sequence

from caspl_plugin.data.catalog import DATASETS

from .parse import Run, RunKey, backbone_of, dataset_key, is_zero_shot
from .records import RunRecord, run_records_table
from .table import Table

TRANSFER_DATASETS = tuple(s.config for s in DATASETS.values() if not s.test_only and s.config != "imagenet")
IMAGENET_VARIANTS = tuple(s.config for s in DATASETS.values() if s.test_only)
_DATASET_ORDER = {spec.config: i for i, spec in enumerate(DATASETS.values())}


# ------------------------------------------------------------------------------------- tables


def harmonic_mean(base: Optional[float], novel: Optional[float]) -> Optional[float]:
    """``2BN/(B+N)``; ``None`` when either is missing."""
    if base is None or novel is None:
        return None
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


@dataclass(frozen=True)
class Stats:
    mean: float
    std: float
    seeds: tuple

    @classmethod
    def of(cls, by_seed: dict) -> Optional["Stats"]:
        if not by_seed:
            return None
        values = list(by_seed.values())
        return cls(statistics.fmean(values), statistics.pstdev(values), tuple(sorted(by_seed, key=lambda s: (s is None, s))))


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


class Group(NamedTuple):
    """One table's worth of runs: a trainer and config within a protocol (and experiment)."""

    protocol: str
    experiment: str
    trainer: str
    cfg: str
    shots: Optional[int]  # None for few-shot (the shots are columns)

    @classmethod
    def of(cls, key: RunKey) -> "Group":
        return cls(key.protocol, key.experiment, key.trainer, key.cfg, None if key.protocol == "few_shot" else key.shots)

    def describe(self) -> str:
        details = ", ".join(filter(None, [self.cfg, f"{self.shots} shots" if self.shots is not None else ""]))
        return f"{self.trainer} ({details})" + (f" [{self.experiment}]" if self.experiment else "")


def short_labels(groups: Sequence[Group]) -> dict[Group, str]:
    """The shortest distinct label of each group: trainer, then trainer/cfg, then with the experiment."""
    for fields in (("trainer",), ("trainer", "cfg"), ("experiment", "trainer", "cfg"), Group._fields):
        labels = {g: "/".join(str(getattr(g, f)) for f in fields if getattr(g, f) not in ("", None)) for g in groups}
        if len(set(labels.values())) == len(labels):
            return labels
    return {g: repr(tuple(g)) for g in groups}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_")


def dataset_order(dataset: str) -> tuple:
    return (_DATASET_ORDER.get(dataset, len(_DATASET_ORDER)), dataset)


class _Cells:
    """Seed -> accuracy for every (group, split, dataset, shots) of the runs with an accuracy."""

    def __init__(self, runs: Iterable[Run]):
        self.values: dict[tuple, dict] = {}
        for run in runs:
            if run.accuracy is not None:
                key = run.key
                self.values.setdefault((Group.of(key), key.split, key.dataset, key.shots), {})[key.seed] = run.accuracy

    def groups(self, protocol: str) -> list[Group]:
        return sorted({c[0] for c in self.values if c[0].protocol == protocol}, key=lambda g: tuple(map(str, g)))

    def datasets(self, group: Group) -> list[str]:
        return sorted({c[2] for c in self.values if c[0] == group}, key=dataset_order)

    def stats(self, group: Group, split: str, dataset: str, shots: Optional[int] = None) -> Optional[Stats]:
        return Stats.of(self.values.get((group, split, dataset, group.shots if shots is None else shots), {}))


def _partial_note(what: str, used: int, total: int) -> list[str]:
    return [f"{what}: over {used} of {total} datasets"] if used < total else []


def _base2new_means(cells: _Cells, group: Group) -> dict[str, tuple[Optional[float], Optional[float]]]:
    result = {}
    for dataset in cells.datasets(group):
        base, novel = cells.stats(group, "base", dataset), cells.stats(group, "new", dataset)
        result[dataset] = (base.mean if base else None, novel.mean if novel else None)
    return result


def _average_base2new(means: Iterable[tuple[Optional[float], Optional[float]]]) -> tuple:
    """Average base and novel over the datasets that have both, HM of the averages, datasets used."""
    complete = [(b, n) for b, n in means if b is not None and n is not None]
    base, novel = _mean(b for b, _ in complete), _mean(n for _, n in complete)
    return base, novel, harmonic_mean(base, novel), len(complete)


def base2new_table(cells: _Cells, group: Group) -> Table:
    rows = []
    for dataset in cells.datasets(group):
        base, novel = cells.stats(group, "base", dataset), cells.stats(group, "new", dataset)
        rows.append([dataset,
                     base and base.mean, base and base.std, base and len(base.seeds),
                     novel and novel.mean, novel and novel.std, novel and len(novel.seeds),
                     harmonic_mean(base and base.mean, novel and novel.mean)])
    base, novel, hm, used = _average_base2new(_base2new_means(cells, group).values())
    rows.append(["Average", base, None, None, novel, None, None, hm])
    return Table(f"base2new_{_slug(group.describe())}", f"Base-to-novel: {group.describe()}",
                 ["dataset", "base", "base_std", "base_seeds", "novel", "novel_std", "novel_seeds", "hm"],
                 rows, kind="base2new",
                 notes=_partial_note("Average (datasets with both base and novel)", used, len(rows) - 1))


def base2new_overview(cells: _Cells, groups: Sequence[Group], labels: dict[Group, str]) -> Table:
    """HM of every trainer side by side."""
    means = {g: _base2new_means(cells, g) for g in groups}
    datasets = sorted({d for m in means.values() for d in m}, key=dataset_order)
    rows = [[d] + [harmonic_mean(*means[g].get(d, (None, None))) for g in groups] for d in datasets]
    rows.append(["Average"] + [_average_base2new(means[g].values())[2] for g in groups])
    return Table("base2new_hm_overview", "Base-to-novel HM by trainer", ["dataset"] + [labels[g] for g in groups], rows,
                 kind="base2new_overview")


def base2new_delta(cells: _Cells, baseline: Group, candidate: Group, labels: dict[Group, str]) -> Table:
    """Per-dataset base / novel / HM of ``candidate`` minus ``baseline``."""
    ours, theirs = _base2new_means(cells, candidate), _base2new_means(cells, baseline)
    datasets = sorted(set(ours) | set(theirs), key=dataset_order)
    shared = [d for d in datasets if None not in ours.get(d, (None,)) + theirs.get(d, (None,))]

    def triple(base, novel):
        return base, novel, harmonic_mean(base, novel)

    def row(label, a, b):
        out = [label]
        for x, y in zip(a, b):
            out += [x, y, None if x is None or y is None else y - x]
        return out

    rows = [row(d, triple(*theirs.get(d, (None, None))), triple(*ours.get(d, (None, None)))) for d in datasets]
    rows.append(row("Average", _average_base2new(theirs[d] for d in shared)[:3],
                    _average_base2new(ours[d] for d in shared)[:3]))
    columns = ["dataset"] + [f"{m}_{who}" for m in ("base", "novel", "hm") for who in ("baseline", "candidate", "delta")]
    title = f"Base-to-novel: {labels[candidate]} (candidate) vs {labels[baseline]} (baseline)"
    notes = [f"Average over the {len(shared)} datasets both have complete"] if len(shared) < len(datasets) else []
    name = f"base2new_delta_{_slug(labels[candidate])}_vs_{_slug(labels[baseline])}"
    return Table(name, title, columns, rows, kind="base2new_delta", notes=notes)


def comparison_pairs(groups: Sequence[Group], baselines: Sequence[str] = ()) -> list[tuple[Group, Group]]:
    """``(baseline, candidate)``: each ``CasPL_X`` against ``X``, and every group against ``baselines``."""
    names = {b.lower() for b in baselines}
    pairs = [(b, c) for c in groups for b in groups
             if c.trainer.lower() == f"caspl_{b.trainer.lower()}" and b.shots == c.shots]
    pairs += [(b, c) for b in groups if b.trainer.lower() in names for c in groups
              if c != b and (b, c) not in pairs and c.trainer.lower() not in names]
    return pairs


def few_shot_table(cells: _Cells, group: Group) -> Table:
    shots = sorted({c[3] for c in cells.values if c[0] == group})
    datasets = cells.datasets(group)
    columns, rows, notes = ["dataset"], [], []
    for k in shots:
        columns += [f"{k}_shots", f"{k}_shots_std"]
    for dataset in datasets:
        row = [dataset]
        for k in shots:
            stats = cells.stats(group, "all", dataset, k)
            row += [stats and stats.mean, stats and stats.std]
        rows.append(row)
    average = ["Average"]
    for i, k in enumerate(shots):
        values = [row[1 + 2 * i] for row in rows if row[1 + 2 * i] is not None]
        average += [_mean(values), None]
        notes += _partial_note(f"Average {k}_shots", len(values), len(datasets))
    rows.append(average)
    return Table(f"few_shot_{_slug(group.describe())}", f"Few-shot: {group.describe()}", columns, rows,
                 kind="few_shot", notes=notes)


def xd_table(cells: _Cells, group: Group) -> Table:
    """Source accuracy, each target, and the averages over the transfer datasets and the ImageNet variants."""
    rows, notes = [], []

    def add(role: str, split: str, dataset: str) -> Optional[float]:
        stats = cells.stats(group, split, dataset)
        if stats:
            rows.append([role, dataset, stats.mean, stats.std, len(stats.seeds)])
        return stats and stats.mean

    tested = {c[2] for c in cells.values if c[0] == group and c[1] == "test"}
    for dataset in sorted({c[2] for c in cells.values if c[0] == group and c[1] == "train"}, key=dataset_order):
        add("source", "train", dataset)
    if "imagenet" in tested:
        add("source (eval-only)", "test", "imagenet")
    for role, members, label in (("cross-dataset", TRANSFER_DATASETS, "transfer datasets"),
                                 ("domain-generalisation", IMAGENET_VARIANTS, "ImageNet variants")):
        means = [add(role, "test", d) for d in members if d in tested]
        if means:
            rows.append(["average", f"Average ({role})", _mean(means), None, None])
            notes += [f"Average ({role}): {len(means)} of {len(members)} {label}"] if len(means) < len(members) else []
    for dataset in sorted(tested - set(TRANSFER_DATASETS) - set(IMAGENET_VARIANTS) - {"imagenet"}, key=dataset_order):
        add("other (not averaged)", "test", dataset)
    return Table(f"xd_{_slug(group.describe())}", f"Cross-dataset / domain generalisation: {group.describe()}",
                 ["role", "dataset", "accuracy", "accuracy_std", "seeds"], rows, kind="xd", notes=notes)


def run_list_table(name: str, title: str, runs: Sequence[Run]) -> Table:
    """One row per run (phase-1 boosting and zero-shot runs: informational)."""
    runs = sorted(runs, key=lambda r: (r.key.experiment, dataset_order(r.key.dataset), r.key.cfg, r.key.seed or 0))
    rows = [[r.key.experiment or "-", r.key.dataset, r.key.trainer, r.key.cfg, r.key.seed, r.accuracy, r.status]
            for r in runs]
    return Table(name, title, ["experiment", "dataset", "trainer", "cfg", "seed", "accuracy", "status"], rows, kind=name)


def runs_table(runs: Sequence[Run]) -> Table:
    rows = []
    for run in runs:
        key, summary = run.key, run.summary
        rows.append([run.path, key and key.protocol, key and key.split, key and key.dataset, key and key.shots,
                     key and key.trainer, key and key.cfg, key and key.seed, run.accuracy,
                     summary and summary.total, summary and summary.best_epoch, summary and summary.last_epoch,
                     summary and summary.max_epoch, run.status, run.log,
                     "; ".join(filter(None, [run.problem or (summary.reason if summary else ""), run.note]))])
    columns = ["path", "protocol", "split", "dataset", "shots", "trainer", "cfg", "seed", "accuracy", "test_total",
               "best_epoch", "last_epoch", "max_epoch", "status", "log", "detail"]
    return Table("runs", "All runs", columns, rows, kind="runs", printed=False)


# -------------------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class Flag:
    kind: str  # "unparsed" | "unfinished" | "epoch-1" | "below-zero-shot" | "missing-seed"
    where: str  # run folder (or cell folder for missing seeds), relative to the root
    detail: str


FLAG_KINDS = ("unparsed", "unfinished", "epoch-1", "below-zero-shot", "missing-seed")


def _run_flags(run: Run) -> list[Flag]:
    summary = run.summary
    if run.status == "unparsed":
        return [Flag("unparsed", run.path, run.problem)]
    if run.status == "unfinished" or (run.status == "no-test" and run.key.protocol != "boosting"):
        return [Flag("unfinished", run.path, f"{run.log}: {summary.reason}")]
    many = (summary.max_epoch or 0) > 1
    if summary.best_epoch == 1 and many:
        return [Flag("epoch-1", run.path, f"best-val checkpoint from epoch 1 of {summary.max_epoch}")]
    if summary.last_epoch == 1 and many and not summary.eval_only:
        return [Flag("epoch-1", run.path, f"training stopped after epoch 1 of {summary.max_epoch}")]
    return []


class ZeroShotReference:
    """Zero-shot accuracy per (dataset, class split, backbone); backbone ``""`` = unknown."""

    def __init__(self):
        self.values: dict[tuple[str, str, str], list[float]] = {}

    def add(self, dataset: str, split: str, backbone: str, accuracy: float) -> None:
        self.values.setdefault((dataset_key(dataset), split, backbone), []).append(accuracy)

    def __len__(self) -> int:
        return len(self.values)

    def lookup(self, dataset: str, split: str, backbone: str) -> Optional[tuple[float, str]]:
        """``(accuracy, class split)`` of the best-matching reference: same split, else all classes;
        same backbone, else an unknown one (or the only one when the run's backbone is unknown)."""
        for wanted in dict.fromkeys((split, "all")):
            for candidate in dict.fromkeys((backbone, "")):
                if (dataset, wanted, candidate) in self.values:
                    return statistics.fmean(self.values[dataset, wanted, candidate]), wanted
            matches = [k for k in self.values if k[:2] == (dataset, wanted)]
            if not backbone and len(matches) == 1:
                return statistics.fmean(self.values[matches[0]]), wanted
        return None


def read_zeroshot_csv(path: str | os.PathLike, reference: Optional[ZeroShotReference] = None) -> ZeroShotReference:
    """Zero-shot accuracies from a CSV with columns ``dataset,accuracy`` and optional ``split``
    (``base``, ``new``/``novel`` or ``all``, the default) and ``backbone`` (e.g. ``vit_b16``, or a config name)."""
    reference = reference if reference is not None else ZeroShotReference()
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        fields = {name.strip().lower(): name for name in reader.fieldnames or ()}
        if not {"dataset", "accuracy"} <= set(fields):
            raise ValueError(f"{path}: expected a CSV header with 'dataset' and 'accuracy' columns, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            def get(name: str) -> str:
                return (row.get(fields.get(name, ""), "") or "").strip()

            split = {"novel": "new", "": "all"}.get(get("split").lower(), get("split").lower())
            if split not in ("base", "new", "all"):
                raise ValueError(f"{path} line {line}: split {get('split')!r} is not one of base, new, all")
            try:
                accuracy = float(get("accuracy").rstrip("%"))
            except ValueError:
                raise ValueError(f"{path} line {line}: accuracy {get('accuracy')!r} is not a number") from None
            backbone = get("backbone").lower()
            reference.add(get("dataset"), split, backbone_of(backbone) or backbone, accuracy)
    return reference


def zero_shot_flags(runs: Sequence[Run], reference: ZeroShotReference) -> list[Flag]:
    flags = []
    for run in runs:
        if run.accuracy is None or is_zero_shot(run.key.trainer):
            continue
        found = reference.lookup(run.key.dataset, run.key.class_split, backbone_of(run.key.cfg))
        if found and run.accuracy < found[0]:
            detail = f"accuracy {run.accuracy:.2f} < zero-shot {found[0]:.2f} ({run.key.dataset}, {found[1]} classes)"
            flags.append(Flag("below-zero-shot", run.path, detail))
    return flags


def seed_flags(runs: Sequence[Run], expect_seeds: int) -> list[Flag]:
    """Cells whose seeds differ from the union over their group, or are fewer than ``expect_seeds``."""
    cells: dict[str, tuple[Group, set]] = {}
    for run in runs:
        key = run.key
        if run.accuracy is None or key.protocol in ("boosting", "zeroshot") or is_zero_shot(key.trainer):
            continue
        cells.setdefault(run.cell, (Group.of(key), set()))[1].add(key.seed)
    union: dict[Group, set] = {}
    for group, seeds in cells.values():
        union.setdefault(group, set()).update(seeds)
    flags = []
    for cell, (group, seeds) in sorted(cells.items()):
        missing = union[group] - seeds
        if missing or len(seeds) < expect_seeds:
            detail = f"seeds {_seed_list(seeds)}"
            detail += f"; missing {_seed_list(missing)} (present in other cells)" if missing else ""
            detail += f"; expected at least {expect_seeds}" if len(seeds) < expect_seeds else ""
            flags.append(Flag("missing-seed", cell, detail))
    return flags


def _seed_list(seeds: Iterable) -> str:
    return ",".join(str(s) for s in sorted(seeds, key=lambda s: (s is None, s)))


# ------------------------------------------------------------------------------------- report


@dataclass
class Report:
    runs: list[Run]
    tables: list[Table]
    flags: list[Flag]
    records: list[RunRecord] = field(default_factory=list)

    def summary(self) -> str:
        by_status = {s: sum(r.status == s for r in self.runs) for s in ("ok", "no-test", "unfinished", "unparsed")}
        runs = ", ".join(f"{n} {s}" for s, n in by_status.items() if n)
        kinds = ", ".join(f"{k} {n}" for k in FLAG_KINDS if (n := sum(f.kind == k for f in self.flags)))
        folders = f"{len(self.records)} caspl run folder(s); " if self.records else ""
        return (folders + f"{len(self.runs)} runs" + (f" ({runs})" if runs else "") + f"; {len(self.flags)} flagged"
                + (f" ({kinds})" if kinds else ""))


def build_report(runs: Sequence[Run], expect_seeds: int = 3, zeroshot: Optional[ZeroShotReference] = None,
                 baselines: Sequence[str] = (), records: Sequence[RunRecord] = (), root: str = ".") -> Report:
    """Tables (per protocol and trainer, comparisons, all runs, flags) and flags for ``runs`` (Dassl
    logs), and the table of ``records`` (run folders of ``caspl distill`` / ``caspl adapt`` under ``root``)."""
    runs = sorted(runs, key=lambda r: r.path)
    parsed = [r for r in runs if r.key is not None]
    reference = ZeroShotReference()
    for run in parsed:
        if is_zero_shot(run.key.trainer) and run.accuracy is not None:
            reference.add(run.key.dataset, run.key.class_split, backbone_of(run.key.cfg), run.accuracy)
    for key, values in (zeroshot.values.items() if zeroshot else ()):
        for value in values:
            reference.add(*key, value)

    flags = [flag for run in runs for flag in _run_flags(run)]
    flags += zero_shot_flags(parsed, reference) + seed_flags(parsed, expect_seeds)
    flags.sort(key=lambda f: (FLAG_KINDS.index(f.kind), f.where))

    cells = _Cells(r for r in parsed if r.key.protocol in ("base2new", "few_shot", "xd"))
    tables = [run_records_table(list(records), root)] if records else []
    groups = cells.groups("base2new")
    labels = short_labels(groups)
    tables += [_labelled(base2new_table(cells, g), labels[g]) for g in groups]
    if len(groups) > 1:
        tables.append(base2new_overview(cells, groups, labels))
        tables += [base2new_delta(cells, b, c, labels) for b, c in comparison_pairs(groups, baselines)]
    for protocol, table in (("few_shot", few_shot_table), ("xd", xd_table)):
        groups = cells.groups(protocol)
        labels = short_labels(groups)
        tables += [_labelled(table(cells, g), labels[g]) for g in groups]
    for protocol, title in (("boosting", "Phase 1 (boosting prompts): the boosting runs' own test accuracy"),
                            ("zeroshot", "Zero-shot CLIP")):
        listed = [r for r in parsed if r.key.protocol == protocol]
        if listed:
            tables.append(run_list_table(protocol, title, listed))
    if runs:
        tables.append(runs_table(runs))
        tables.append(Table("flags", f"Flagged: {len(flags)}", ["kind", "where", "detail"],
                            [[f.kind, f.where, f.detail] for f in flags], kind="flags"))
    _make_names_unique(tables)
    return Report(list(runs), tables, flags, list(records))


def _labelled(table: Table, label: str) -> Table:
    table.label = label
    return table


def _make_names_unique(tables: Sequence[Table]) -> None:
    seen: dict[str, int] = {}
    for table in tables:
        seen[table.name] = seen.get(table.name, 0) + 1
        if seen[table.name] > 1:
            table.name = f"{table.name}_{seen[table.name]}"
