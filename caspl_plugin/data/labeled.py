"""Labeled images (:class:`~caspl_plugin.data.splits.Record` lists) as datasets of the engine's loop.

An item is ``(image_or_None, path, {"labels": label})`` (the engine's data protocol): the loop
passes ``labels`` to the objective; an unreadable file yields ``None`` and is counted, not fatal.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from .images import open_rgb
from .splits import Record

logger = logging.getLogger(__name__)


class LabeledImages(Dataset):
    """Labeled records opened with :func:`~caspl_plugin.data.images.open_rgb` and transformed."""

    def __init__(self, records: Sequence[Record], transform: Callable):
        self.records, self.transform = list(records), transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        label = {"labels": torch.tensor(record.label, dtype=torch.long)}
        try:
            return self.transform(open_rgb(record.impath)), record.impath, label
        except Exception as error:  # any unreadable file is skipped and reported, never fatal
            logger.debug("Skipping unreadable image %s: %s", record.impath, error)
            return None, record.impath, label


def class_names_of(records: Sequence[Record]) -> list[str]:
    """The class names of ``records`` in label order (labels must be 0..C-1)."""
    names = {record.label: record.classname for record in records}
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"Labels must be 0..{len(names) - 1}, got {sorted(names)}")
    return [names[label] for label in range(len(names))]
