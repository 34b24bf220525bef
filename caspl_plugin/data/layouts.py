"""Read the CoOp benchmark layouts and plain image folders into :class:`Record` splits. No Dassl import.

:func:`load_benchmark` is CoOp's whole reading pipeline for one dataset: the split source of its
:class:`~caspl_plugin.data.catalog.DatasetSpec`, then few-shot sampling (cached as JSON), then
base/new class subsampling. The folder readers serve custom domains:

- :func:`read_labeled_folder`: ``<folder>/<class>/<image>``, split 50/20/30 per class with a fixed
  seed, or ``<folder>/{train,val,test}/<class>/<image>`` when ``train/`` and ``test/`` exist;
- :func:`read_unlabeled_folder`: every image below ``<folder>``, label :data:`UNKNOWN_LABEL`.

Benchmark folder scans list images in ``os.listdir`` order, as CoOp does, so that few-shot sampling
picks the same files; the ImageNet scan is cached as ``preprocessed.json``.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .catalog import DatasetSpec, dataset_spec
from .classnames import read_folder_class_names
from .splits import (
    FEWSHOT_DIR,
    Record,
    load_or_create_fewshot,
    read_split,
    read_split_file,
    split_per_class,
    subsample_classes,
    write_split,
)

logger = logging.getLogger(__name__)

#: Label of images whose class is unknown (unlabeled folders).
UNKNOWN_LABEL = -1
IMAGENET_SCAN_CACHE = "preprocessed.json"


@dataclass
class Splits:
    """Train/val/test records of one dataset; ``val`` may be empty."""

    train: list[Record]
    val: list[Record]
    test: list[Record]


def _listdir_nohidden(path: str) -> list[str]:
    return [name for name in os.listdir(path) if not name.startswith(".")]


def _class_folders(path: str) -> list[str]:
    """Sorted sub-folders of ``path``, except the few-shot cache a folder dataset keeps there."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Image directory not found: {path} (expected one sub-folder per class)")
    return sorted(
        name for name in _listdir_nohidden(path) if name != FEWSHOT_DIR and os.path.isdir(os.path.join(path, name))
    )


def _scan_class_folders(split_dir: str, folders: Sequence[str], classnames: Sequence[str]) -> list[Record]:
    """Records for ``folders[label]`` (images in listing order) named ``classnames[label]``."""
    records = []
    for label, (folder, classname) in enumerate(zip(folders, classnames)):
        class_dir = os.path.join(split_dir, folder)
        records += [Record(os.path.join(class_dir, name), label, classname) for name in _listdir_nohidden(class_dir)]
    return records


def _lookup_classnames(folders: Sequence[str], classnames: dict[str, str], source: Path) -> list[str]:
    unknown = [folder for folder in folders if folder not in classnames]
    if unknown:
        raise ValueError(f"Folder(s) {unknown[:5]} have no entry in {source}")
    return [classnames[folder] for folder in folders]


def read_fgvc_aircraft(dataset_dir: str, image_dir: str) -> Splits:
    """FGVC-Aircraft: ``variants.txt`` orders the classes; ``images_variant_<split>.txt`` lines are
    ``<image id> <variant name>``."""
    variants = Path(dataset_dir) / "variants.txt"
    if not variants.is_file():
        raise FileNotFoundError(f"FGVC-Aircraft class list not found: {variants} (one variant name per line)")
    label_of = {line.strip(): label for label, line in enumerate(variants.read_text(encoding="utf-8").splitlines())}

    def read(split: str) -> list[Record]:
        path = Path(dataset_dir) / f"images_variant_{split}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"FGVC-Aircraft split not found: {path} (lines '<image id> <variant>')")
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            image_id, _, classname = line.strip().partition(" ")
            if classname not in label_of:
                raise ValueError(f"{path}, line {number}: variant {classname!r} is not in {variants}")
            records.append(Record(os.path.join(image_dir, image_id + ".jpg"), label_of[classname], classname))
        return records

    return Splits(read("train"), read("val"), read("test"))


def read_imagenet(dataset_dir: str, image_dir: str) -> tuple[list[Record], list[Record]]:
    """ImageNet ``(train, test)``: ``images/train`` and ``images/val`` class folders named by
    ``classnames.txt``; the scan is cached as JSON in the dataset directory."""
    cache = Path(dataset_dir) / IMAGENET_SCAN_CACHE
    if cache.is_file():
        scanned = read_split_file(cache, image_dir, ("train", "test"))
        return scanned["train"], scanned["test"]
    classnames_file = Path(dataset_dir) / "classnames.txt"
    classnames = read_folder_class_names(classnames_file)
    splits = {}
    for key, folder in (("train", "train"), ("test", "val")):
        split_dir = os.path.join(image_dir, folder)
        folders = _class_folders(split_dir)
        splits[key] = _scan_class_folders(split_dir, folders, _lookup_classnames(folders, classnames, classnames_file))
    try:
        write_split(cache, image_dir, **splits)
    except OSError as error:
        logger.warning("Could not cache the ImageNet folder scan at %s (%s)", cache, error)
    return splits["train"], splits["test"]


def read_imagenet_variant(spec: DatasetSpec, dataset_dir: str, image_dir: str) -> list[Record]:
    """A test-only ImageNet variant: class folders named by wnid (sorted), or ``0..N-1`` (V2)."""
    classnames_file = Path(dataset_dir) / "classnames.txt"
    classnames = read_folder_class_names(classnames_file)
    if spec.split_source == "test_numbered_folders":
        folders = [str(label) for label in range(len(classnames))]
        missing = [folder for folder in folders if not os.path.isdir(os.path.join(image_dir, folder))]
        if missing:
            raise FileNotFoundError(f"{spec.name}: class folder(s) {missing[:5]} missing under {image_dir}")
        return _scan_class_folders(image_dir, folders, list(classnames.values()))
    folders = _class_folders(image_dir)
    return _scan_class_folders(image_dir, folders, _lookup_classnames(folders, classnames, classnames_file))


def apply_protocol(
    dataset_dir: str,
    image_dir: str,
    splits: Splits,
    *,
    num_shots: int = -1,
    seed: int = -1,
    subsample: str = "all",
    val_is_test: bool = False,
    rng=random,
    cache_fewshot: bool = True,
) -> Splits:
    """CoOp's few-shot sampling (``num_shots >= 1``, cached in the dataset folder unless
    ``cache_fewshot=False``) then base/new subsampling.

    ``val_is_test`` (ImageNet) samples the train split only and uses the test split as val.
    """
    train, val, test = splits.train, splits.val, splits.test
    if num_shots >= 1:
        train, sampled_val = load_or_create_fewshot(
            dataset_dir, image_dir, num_shots, seed, train, None if val_is_test else val, rng=rng, cache=cache_fewshot
        )
        val = val if sampled_val is None else sampled_val
    if val_is_test:
        train, test = subsample_classes(train, test, subsample=subsample)
        return Splits(train, test, test)
    return Splits(*subsample_classes(train, val, test, subsample=subsample))


def load_benchmark(
    name: str, root: str, *, num_shots: int = -1, seed: int = -1, subsample: str = "all", rng=random,
    cache_fewshot: bool = True,
) -> Splits:
    """Read one CoOp benchmark dataset under ``root`` (``DATASET.ROOT``) as CoOp's readers do.

    Test-only ImageNet variants return their images as both train and test (CoOp's convention)
    and ignore ``num_shots`` and ``subsample``.
    """
    spec = dataset_spec(name)
    dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(root)), spec.dataset_dir)
    image_dir = os.path.join(dataset_dir, spec.image_dir) if spec.image_dir else dataset_dir
    if spec.test_only:
        data = read_imagenet_variant(spec, dataset_dir, image_dir)
        return Splits(data, [], data)
    if spec.split_source == "imagenet_folders":
        train, test = read_imagenet(dataset_dir, image_dir)
        splits, val_is_test = Splits(train, [], test), True
    elif spec.split_source == "fgvc_txt":
        splits, val_is_test = read_fgvc_aircraft(dataset_dir, image_dir), False
    else:
        splits, val_is_test = Splits(*read_split(os.path.join(dataset_dir, spec.split_file), image_dir)), False
    return apply_protocol(
        dataset_dir, image_dir, splits, num_shots=num_shots, seed=seed, subsample=subsample,
        val_is_test=val_is_test, rng=rng, cache_fewshot=cache_fewshot,
    )


def _read_class_tree(split_dir: str, classnames: Optional[Sequence[str]] = None) -> list[Record]:
    """Records of ``split_dir/<class>/<image>``; labels follow ``classnames`` (default: sorted folders)."""
    from .unlabeled import list_images

    folders = _class_folders(split_dir)
    classnames = list(folders if classnames is None else classnames)
    unknown = sorted(set(folders) - set(classnames))
    if unknown:
        raise ValueError(f"Class folder(s) {unknown} in {split_dir} are not among the training classes")
    if not folders:
        raise FileNotFoundError(f"No class folders in {split_dir} (expected <class>/<image> sub-folders)")
    return [
        Record(str(path), classnames.index(folder), folder)
        for folder in folders
        for path in list_images(os.path.join(split_dir, folder))
    ]


def read_labeled_folder(folder: str) -> Splits:
    """A custom labeled domain: one sub-folder per class (the folder name is the class name).

    With ``train/`` and ``test/`` (and optionally ``val/``) sub-folders those are the splits;
    otherwise each class is split 50/20/30 into train/val/test with a fixed seed.
    """
    if all(os.path.isdir(os.path.join(folder, split)) for split in ("train", "test")):
        classnames = _class_folders(os.path.join(folder, "train"))
        val_dir = os.path.join(folder, "val")
        return Splits(
            _read_class_tree(os.path.join(folder, "train")),
            _read_class_tree(val_dir, classnames) if os.path.isdir(val_dir) else [],
            _read_class_tree(os.path.join(folder, "test"), classnames),
        )
    return Splits(*split_per_class(_read_class_tree(folder)))


def read_unlabeled_folder(folder: str) -> list[Record]:
    """Every image below ``folder`` (recursively, sorted), with label :data:`UNKNOWN_LABEL`."""
    from .unlabeled import list_images

    return [Record(str(path), UNKNOWN_LABEL, "") for path in list_images(folder)]
