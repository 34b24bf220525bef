"""Accuracy of a classifier over a labeled dataset (the engine's data protocol), under autocast."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .loop import collate_items
from .step import autocast


@dataclass
class EvalResult:
    accuracy: float  # percent of the readable images
    count: int
    skipped: list[str] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 100, precision: str = "fp32",
             num_workers: int = 0, progress: str | None = None) -> EvalResult:
    """Top-1 accuracy of ``model(images)`` on ``dataset`` (items carry ``extras["labels"]``)."""
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_items)
    correct, count, skipped = 0, 0, []
    for batch in tqdm(loader, desc=progress, disable=progress is None, leave=False):
        skipped.extend(batch.skipped)
        if batch.images is None:
            continue
        with autocast(device, precision):
            logits = model(batch.images.to(device))
        correct += int((logits.argmax(-1).cpu() == batch.extras["labels"]).sum())
        count += len(batch.images)
    if count == 0:
        raise RuntimeError("No readable image to evaluate on")
    return EvalResult(100.0 * correct / count, count, skipped)
