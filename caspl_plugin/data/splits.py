"""CoOp's split protocol without Dassl: split JSON files, base/new classes, few-shot sampling.

- :func:`read_split` reads a ``split_zhou_<Name>.json`` file (:data:`SPLIT_LAYOUT`) into
  :class:`Record` lists; :func:`write_split` writes the same format (paths relative, atomic).
- :func:`subsample_classes` keeps the base (first ``ceil(n/2)`` sorted labels) or new classes and
  relabels them from 0, deciding from the first split it is given.
- :func:`generate_fewshot` is the algorithm of Dassl's ``DatasetBase.generate_fewshot_dataset``
  (group by label in order of appearance, ``rng.sample(items, K)`` per label), so with the global
  ``random`` seeded as Dassl's ``set_random_seed(seed)`` does it picks the same images as CoOp.
- :func:`load_or_create_fewshot` caches a sampled split as JSON at
  ``<dataset_dir>/split_fewshot/shot_{K}-seed_{S}.json`` (CoOp uses a ``.pkl`` there; it is never read).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..files import atomic_write
from ..names import class_name_problem

logger = logging.getLogger(__name__)

SPLIT_LAYOUT = '{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}'
SUBSAMPLE_CHOICES = ("all", "base", "new")
FEWSHOT_DIR = "split_fewshot"
#: CoOp samples at most this many validation images per class in few-shot runs.
MAX_VAL_SHOTS = 4


@dataclass(frozen=True)
class Record:
    """One image: absolute path, 0-based label, class name (the fields of Dassl's ``Datum``)."""

    impath: str
    label: int
    classname: str


class SplitFormatError(ValueError):
    """A split file exists but does not follow :data:`SPLIT_LAYOUT`."""


def _split_error(path, problem: str) -> SplitFormatError:
    return SplitFormatError(f"Malformed split file {path}: {problem}. Expected layout: {SPLIT_LAYOUT}")


def _parse_entries(path, key: str, entries, image_dir: str) -> list[Record]:
    if not isinstance(entries, list):
        raise _split_error(path, f"{key!r} must be a list, got {type(entries).__name__}")
    records = []
    for index, entry in enumerate(entries):
        if not (
            isinstance(entry, (list, tuple))
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], int)
            and not isinstance(entry[1], bool)
            and isinstance(entry[2], str)
        ):
            raise _split_error(path, f"{key}[{index}] must be [relpath, label, classname], got {entry!r}")
        relpath, label, classname = entry
        parts = relpath.replace("\\", "/").split("/")
        if not relpath or os.path.isabs(relpath) or relpath[1:2] == ":" or ".." in parts:
            raise _split_error(path, f"{key}[{index}]: image path {relpath!r} must be relative to the image "
                                     "folder and stay inside it (no absolute path, drive or '..')")
        if label < 0:
            raise _split_error(path, f"{key}[{index}]: label {label} must be >= 0")
        reason = class_name_problem(classname)
        if reason:
            raise _split_error(path, f"{key}[{index}]: class name {reason}")
        records.append(Record(os.path.join(image_dir, relpath), label, classname))
    return records


def read_split_file(path: str | Path, image_dir: str | Path, keys: Sequence[str]) -> dict[str, list[Record]]:
    """Read the lists ``keys`` of a split JSON file, joining each relative path to ``image_dir``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Split file not found: {path}. Expected a JSON file with layout {SPLIT_LAYOUT}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _split_error(path, f"not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise _split_error(path, f"top level must be an object, got {type(content).__name__}")
    missing = [key for key in keys if key not in content]
    if missing:
        raise _split_error(path, f"missing key(s) {missing}")
    return {key: _parse_entries(path, key, content[key], str(image_dir)) for key in keys}


def read_split(path: str | Path, image_dir: str | Path) -> tuple[list[Record], list[Record], list[Record]]:
    """Read a CoOp split file into ``(train, val, test)`` record lists."""
    splits = read_split_file(path, image_dir, ("train", "val", "test"))
    return splits["train"], splits["val"], splits["test"]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`caspl_plugin.files.atomic_write`)."""
    atomic_write(path, text)


def write_split(path: str | Path, image_dir: str | Path, **splits: Sequence[Record]) -> None:
    """Write record lists (e.g. ``train=..., val=...``) as a split JSON, paths relative to ``image_dir``."""
    image_dir = Path(image_dir)

    def entry(record: Record) -> list:
        try:
            relpath = Path(record.impath).relative_to(image_dir).as_posix()
        except ValueError:
            raise ValueError(f"Image {record.impath} is not inside the image directory {image_dir}") from None
        return [relpath, int(record.label), record.classname]

    content = {key: [entry(record) for record in records] for key, records in splits.items()}
    atomic_write_text(path, json.dumps(content, indent=1))


def subsample_classes(*splits: Sequence, subsample: str = "all") -> tuple[list, ...]:
    """Keep the base or new half of the classes in every split, relabelled from 0.

    The classes are the sorted labels of the first split; base = the first ``ceil(n/2)``,
    new = the rest. ``"all"`` returns the splits unchanged.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(f"subsample must be one of {SUBSAMPLE_CHOICES}, got {subsample!r}")
    if subsample == "all":
        return tuple(list(split) for split in splits)
    labels = sorted({item.label for item in splits[0]})
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {label: new_label for new_label, label in enumerate(selected)}
    logger.info("Keeping the %s classes: %d of %d", subsample, len(selected), len(labels))
    return tuple(
        [Record(item.impath, relabel[item.label], item.classname) for item in split if item.label in relabel]
        for split in splits
    )


def generate_fewshot(items: Sequence, num_shots: int, *, repeat: bool = False, rng=random) -> list:
    """Sample ``num_shots`` items per label, exactly as Dassl's ``generate_fewshot_dataset``.

    Labels are visited in order of first appearance; a label with fewer items keeps them all
    (or draws with replacement if ``repeat``). ``rng`` is the ``random`` module (the global
    state Dassl seeds) or a ``random.Random``. ``num_shots < 1`` returns ``items`` unchanged.
    """
    if num_shots < 1:
        return list(items)
    by_label: dict[int, list] = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    sampled = []
    for group in by_label.values():
        if len(group) >= num_shots:
            sampled.extend(rng.sample(group, num_shots))
        elif repeat:
            sampled.extend(rng.choices(group, k=num_shots))
        else:
            sampled.extend(group)
    return sampled


def fewshot_split_path(dataset_dir: str | Path, num_shots: int, seed: int) -> Path:
    """Where the few-shot split for ``(num_shots, seed)`` is cached."""
    return Path(dataset_dir) / FEWSHOT_DIR / f"shot_{num_shots}-seed_{seed}.json"


def load_or_create_fewshot(
    dataset_dir: str | Path,
    image_dir: str | Path,
    num_shots: int,
    seed: int,
    train: Sequence[Record],
    val: Optional[Sequence[Record]] = None,
    *,
    rng=random,
    cache: bool = True,
) -> tuple[list[Record], Optional[list[Record]]]:
    """CoOp's few-shot step: ``num_shots`` train and ``min(num_shots, 4)`` val images per class.

    Reads the cached split if present, otherwise samples train then val (in that order, from
    ``rng``) and caches them in ``dataset_dir`` (as CoOp does; ``cache=False``: sampled only, the
    dataset folder is neither read nor written). ``val=None`` (ImageNet) samples and caches the
    train split only. A cache that cannot be written (read-only dataset) is logged and skipped.
    """
    if not cache:
        sampled_train = generate_fewshot(train, num_shots, rng=rng)
        return sampled_train, None if val is None else generate_fewshot(val, min(num_shots, MAX_VAL_SHOTS), rng=rng)
    path = fewshot_split_path(dataset_dir, num_shots, seed)
    keys = ("train",) if val is None else ("train", "val")
    if path.is_file():
        logger.info("Loading few-shot split from %s", path)
        cached = read_split_file(path, image_dir, keys)
        return cached["train"], cached.get("val")
    sampled_train = generate_fewshot(train, num_shots, rng=rng)
    sampled_val = None if val is None else generate_fewshot(val, min(num_shots, MAX_VAL_SHOTS), rng=rng)
    splits = {"train": sampled_train} if val is None else {"train": sampled_train, "val": sampled_val}
    try:
        write_split(path, image_dir, **splits)
        logger.info("Saved few-shot split to %s", path)
    except OSError as error:
        logger.warning("Could not cache the few-shot split at %s (%s); continuing without a cache", path, error)
    return sampled_train, sampled_val


def split_per_class(
    records: Sequence[Record], *, p_train: float = 0.5, p_val: float = 0.2, seed: int = 0
) -> tuple[list[Record], list[Record], list[Record]]:
    """Split each class into train/val/test (CoOp's 50/20/30 rule) with a private, seeded RNG."""
    rng = random.Random(seed)
    by_label: dict[int, list[Record]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    train, val, test = [], [], []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n_train, n_val = round(len(group) * p_train), round(len(group) * p_val)
        if n_train < 1 or n_val < 1 or len(group) - n_train - n_val < 1:
            raise ValueError(
                f"Class {group[0].classname!r} has {len(group)} image(s): too few for a "
                f"{p_train:.0%}/{p_val:.0%}/{1 - p_train - p_val:.0%} train/val/test split "
                "(add images, or provide train/ and test/ folders)"
            )
        train += group[:n_train]
        val += group[n_train : n_train + n_val]
        test += group[n_train + n_val :]
    return train, val, test
