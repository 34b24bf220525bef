"""Dataset readers for the CoOp benchmark layouts and custom image folders.

None of it needs Dassl; the Dassl ``DatasetBase`` readers built on it are
:mod:`caspl_plugin.plugin.dassl_datasets`.

Imports artifacts, files and names only.
"""
from .catalog import (
    DATASETS,
    EUROSAT_NEW_CNAMES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_80,
    TEMPLATES,
    DatasetSpec,
    dataset_spec,
    template_for,
)
from .classnames import read_class_names, read_folder_class_names
from .layouts import Splits, load_benchmark, read_labeled_folder, read_unlabeled_folder
from .splits import Record, generate_fewshot, read_split, subsample_classes

__all__ = [
    "DATASETS",
    "EUROSAT_NEW_CNAMES",
    "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_80",
    "TEMPLATES",
    "DatasetSpec",
    "Record",
    "Splits",
    "dataset_spec",
    "generate_fewshot",
    "load_benchmark",
    "read_class_names", "read_folder_class_names",
    "read_labeled_folder",
    "read_split",
    "read_unlabeled_folder",
    "subsample_classes",
    "template_for",
]
