"""Training on in-memory tensors (the demo, quick experiments): no data loader, no checkpoints."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .step import set_lr, training_step


def fit(
    objective: nn.Module,
    images: Tensor,
    labels: Optional[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    lr_at: Optional[Callable[[int], float]] = None,
    seed: int = 0,
    precision: str = "fp32",
    progress: Optional[str] = None,
    **batch: Tensor,
) -> list[float]:
    """Train ``objective`` on in-memory tensors: shuffled mini-batches (``seed``), per-epoch LR
    ``lr_at(epoch)``, and the model's ``on_epoch_end`` after each epoch. Tensors in ``batch`` are
    indexed with the images (e.g. cached teacher logits). Returns the mean loss per epoch."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    model = getattr(objective, "student", objective)
    losses = []
    bar = tqdm(range(epochs), desc=progress, disable=progress is None, leave=False)
    for epoch in bar:
        if lr_at is not None:
            set_lr(optimizer, lr_at(epoch))
        objective.train()
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            metrics = training_step(
                objective, images[index], None if labels is None else labels[index], optimizer, precision,
                **{k: v[index] for k, v in batch.items()},
            )
            total += metrics["loss"] * len(index)
        losses.append(total / len(images))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if hasattr(model, "on_epoch_end"):
            model.on_epoch_end(epoch, epochs)
    return losses
