"""Training pieces shared by every loop (the ``caspl`` CLI, the demo and the Dassl trainers).

An *objective* is any module with ``loss(images, labels) -> (loss, metrics)``: a method model
(phase 2) or a :class:`~caspl_plugin.boosting.BoostingDistiller` (phase 1).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Optional

import torch
from torch import Tensor, nn

#: The one precision vocabulary of every loop (distill, teacher-cache, adapt, the Dassl trainers).
#: Weights (and the learnable prompts, the master copy) stay fp32; compute runs under autocast:
#: ``amp`` = fp16 on CUDA and bf16 elsewhere, ``bf16`` / ``fp16`` = that dtype on any device.
PRECISIONS = ("fp32", "amp", "bf16", "fp16")


def autocast_dtype(device: torch.device | str, precision: str) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "amp":
        return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device | str, precision: str = "fp32"):
    """Mixed precision by autocast (weights stay fp32); see :data:`PRECISIONS`."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a training loop: the 1-based ``epoch`` and the ``step`` within it where it
    stopped, and how many epochs the checkpoint on disk holds (``completed_epochs``; None when the
    loop keeps no checkpoint). Still a ``KeyboardInterrupt`` for callers that catch that."""

    def __init__(self, epoch: int, step: int, completed_epochs: Optional[int] = None):
        super().__init__(f"interrupted at epoch {epoch}, step {step}")
        self.epoch, self.step, self.completed_epochs = epoch, step, completed_epochs


def training_step(objective: nn.Module, images: Tensor, labels, optimizer: torch.optim.Optimizer, precision: str = "fp32", **batch) -> dict[str, float]:
    """One optimisation step: loss under autocast, backward, step. Returns the metrics as floats.

    Extra keyword arguments (e.g. cached ``teacher_logits``) are passed on to ``objective.loss``.
    """
    device = next(objective.parameters()).device
    with autocast(device, precision):
        loss, metrics = objective.loss(images, labels, **batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"Loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {k: float(v) for k, v in metrics.items()}


def make_optimizer(params: Iterable[nn.Parameter], lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """SGD as in Dassl/CoOp: momentum 0.9, weight decay 5e-4, no Nesterov."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("Nothing to optimise: no parameter requires grad")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def epoch_lr(epoch: int, base_lr: float, max_epoch: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Dassl's cosine schedule with constant warm-up (``WARMUP_RECOUNT=True``), stepped per epoch.

    Epochs ``0 .. warmup_epochs-1`` run at ``warmup_lr``; epoch ``e`` after that at
    ``base_lr · ½(1 + cos(π (e - warmup_epochs) / max_epoch))``.
    """
    if epoch < warmup_epochs:
        return warmup_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max_epoch))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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
