"""Training on in-memory tensors (the demo, quick experiments): no data loader, no checkpoints."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

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
    plan: Optional[Callable[[int, int, torch.Generator], Sequence[Sequence[int]]]] = None,
    max_steps: Optional[int] = None,
    **batch: Tensor,
) -> list[float]:
    """Train ``objective`` on in-memory tensors: shuffled mini-batches (``seed``), per-epoch LR
    ``lr_at(epoch)``, and the model's ``on_epoch_end`` after each epoch. Tensors in ``batch`` are
    indexed with the images (e.g. cached teacher features, each image's domain). Returns the mean
    loss per epoch.

    ``plan(epoch, batch_size, generator)`` replaces the shuffled mini-batches with the epoch's
    batches as index lists (the loop's batch-plan hook, e.g. one domain per batch with
    :func:`~caspl_plugin.data.domains.plan_batches`); ``max_steps`` stops after that many steps
    (its last epoch may be partial)."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    model = getattr(objective, "student", objective)
    losses, steps = [], 0
    bar = tqdm(range(epochs), desc=progress, disable=progress is None, leave=False)
    for epoch in bar:
        if lr_at is not None:
            set_lr(optimizer, lr_at(epoch))
        objective.train()
        if plan is None:
            order = torch.randperm(len(images), generator=generator)
            batches = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
        else:
            batches = [torch.as_tensor(index, dtype=torch.long) for index in plan(epoch, batch_size, generator)]
        if max_steps is not None:
            batches = batches[:max(max_steps - steps, 0)]
        total, seen = 0.0, 0
        for index in batches:
            metrics = training_step(
                objective, images[index], None if labels is None else labels[index], optimizer, precision,
                **{k: v[index] for k, v in batch.items()},
            )
            total, seen, steps = total + metrics["loss"] * len(index), seen + len(index), steps + 1
        losses.append(total / max(seen, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if hasattr(model, "on_epoch_end"):
            model.on_epoch_end(epoch, epochs)
        if max_steps is not None and steps >= max_steps:
            break
    return losses
