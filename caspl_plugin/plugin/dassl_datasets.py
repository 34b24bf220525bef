"""Dassl ``DatasetBase`` readers for the 15 CoOp benchmarks and for custom image folders.

Dassl is imported when :func:`dataset_classes` first runs. The benchmark readers behave as
CoOp's (:func:`~caspl_plugin.data.layouts.load_benchmark`): split files, ``DATASET.NUM_SHOTS``
few-shot sampling with ``min(K, 4)`` val shots cached as JSON, ``DATASET.SUBSAMPLE_CLASSES``.
Two folder datasets serve custom domains under ``DATASET.ROOT/DATASET.FOLDER``:

- ``LabeledImageFolder``: one sub-folder per class (see :func:`~caspl_plugin.data.layouts.read_labeled_folder`);
- ``UnlabeledImageFolder``: any images, labels unknown (-1); the class names come from
  ``DATASET.CLASS_NAMES_FILE`` and are what ``classnames``/``lab2cname``/``num_classes`` report.

:func:`register_datasets` registers only the names the host's Dassl registry does not have yet.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Sequence

from ..data.catalog import DATASETS
from ..data.layouts import Splits, apply_protocol, load_benchmark, read_labeled_folder, read_unlabeled_folder
from ..data.splits import Record

logger = logging.getLogger(__name__)

#: ``DATASET.*`` keys these readers use that Dassl's defaults lack (CoOp adds the first).
DATASET_CFG_DEFAULTS = {
    "SUBSAMPLE_CLASSES": "all",  # "all" | "base" | "new"
    "FOLDER": "",  # folder datasets: sub-directory of DATASET.ROOT ("" = ROOT itself)
    "CLASS_NAMES_FILE": "",  # UnlabeledImageFolder: one class name per line
}


def extend_dataset_cfg(cfg) -> None:
    """Add the missing :data:`DATASET_CFG_DEFAULTS` keys to an unfrozen yacs config (in place)."""
    for key, value in DATASET_CFG_DEFAULTS.items():
        if key not in cfg.DATASET:
            setattr(cfg.DATASET, key, value)


def _root(cfg) -> str:
    return os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))


def _folder(cfg) -> str:
    return os.path.join(_root(cfg), cfg.DATASET.get("FOLDER", ""))


def _subsample(cfg) -> str:
    return cfg.DATASET.get("SUBSAMPLE_CLASSES", "all")


@functools.lru_cache(maxsize=None)
def dataset_classes() -> dict[str, type]:
    """The reader classes by ``DATASET.NAME``: 15 benchmarks, then the two folder datasets."""
    try:
        from dassl.data.datasets import DatasetBase, Datum
    except ImportError as error:
        raise ImportError(f"The Dassl dataset readers need Dassl.pytorch installed ({error})") from error
    from ..data.unlabeled import read_class_names

    def to_datums(records: Sequence[Record], source: str) -> list:
        datums = []
        for record in records:
            try:
                datums.append(Datum(impath=record.impath, label=record.label, classname=record.classname))
            except AssertionError:  # Datum asserts the file exists
                raise FileNotFoundError(f"{source}: image not found: {record.impath}") from None
        return datums

    class SplitsDataset(DatasetBase):
        """Builds Dassl's train_x/val/test from record splits; an empty val becomes ``None``."""

        def _init_from_splits(self, splits: Splits, source: str) -> None:
            test = to_datums(splits.test, source)
            val = test if splits.val is splits.test else to_datums(splits.val, source)
            super().__init__(train_x=to_datums(splits.train, source), val=val or None, test=test)

    class CoOpBenchmark(SplitsDataset):
        """A CoOp benchmark dataset; subclasses set ``spec``."""

        spec = None

        def __init__(self, cfg):
            spec = self.spec
            self.dataset_dir = os.path.join(_root(cfg), spec.dataset_dir)
            splits = load_benchmark(
                spec.name, cfg.DATASET.ROOT, num_shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED,
                subsample=_subsample(cfg),
            )
            self._init_from_splits(splits, spec.name)

    def benchmark_class(spec) -> type:
        doc = f"CoOp's {spec.name} ({spec.dataset_dir}/{spec.image_dir}, {spec.split_source})."
        namespace = {"spec": spec, "dataset_dir": spec.dataset_dir, "__doc__": doc, "__module__": __name__}
        return type(spec.name, (CoOpBenchmark,), namespace)

    class LabeledImageFolder(SplitsDataset):
        """A custom domain, ``DATASET.ROOT/DATASET.FOLDER/<class>/<image>`` (or with train/val/test)."""

        def __init__(self, cfg):
            self.dataset_dir = _folder(cfg)
            splits = apply_protocol(
                self.dataset_dir, self.dataset_dir, read_labeled_folder(self.dataset_dir),
                num_shots=cfg.DATASET.NUM_SHOTS, seed=cfg.SEED, subsample=_subsample(cfg),
            )
            self._init_from_splits(splits, f"LabeledImageFolder {self.dataset_dir}")

    class UnlabeledImageFolder(DatasetBase):
        """Unlabeled images of a custom domain plus its class names; train_x = test = all images."""

        def __init__(self, cfg):
            self.dataset_dir = _folder(cfg)
            if cfg.DATASET.NUM_SHOTS >= 1 or _subsample(cfg) != "all":
                raise ValueError(
                    "UnlabeledImageFolder has no labels: it cannot sample DATASET.NUM_SHOTS="
                    f"{cfg.DATASET.NUM_SHOTS} per class or SUBSAMPLE_CLASSES={_subsample(cfg)!r} "
                    "(expected NUM_SHOTS -1 and SUBSAMPLE_CLASSES all; use LabeledImageFolder)"
                )
            names_file = cfg.DATASET.get("CLASS_NAMES_FILE", "")
            if not names_file:
                raise ValueError("UnlabeledImageFolder needs DATASET.CLASS_NAMES_FILE (one class name per line)")
            if os.path.isfile(os.path.join(self.dataset_dir, names_file)):  # relative to the folder, else as given
                names_file = os.path.join(self.dataset_dir, names_file)
            self._class_names = read_class_names(names_file)
            data = to_datums(read_unlabeled_folder(self.dataset_dir), f"UnlabeledImageFolder {self.dataset_dir}")
            super().__init__(train_x=data, test=data)

        @property
        def classnames(self):
            return list(self._class_names)

        @property
        def lab2cname(self):
            return dict(enumerate(self._class_names))

        @property
        def num_classes(self):
            return len(self._class_names)

    classes = {name: benchmark_class(spec) for name, spec in DATASETS.items()}
    classes.update({cls.__name__: cls for cls in (LabeledImageFolder, UnlabeledImageFolder)})
    return classes


def register_datasets(registry=None) -> list[str]:
    """Register the readers whose names are free in ``registry`` (default: Dassl's ``DATASET_REGISTRY``).

    Names the host already registered keep the host's reader (logged). Returns the names
    registered by this call, so a second call returns ``[]``.
    """
    if registry is None:
        from dassl.data.datasets import DATASET_REGISTRY as registry
    taken = set(registry.registered_names())
    registered, kept = [], []
    for name, cls in dataset_classes().items():
        if name not in taken:
            registry.register(cls)
            registered.append(name)
        elif registry.get(name) is not cls:
            kept.append(name)
    if kept:
        logger.info("Dassl already has dataset reader(s) %s; keeping the host's", ", ".join(kept))
    return registered

