"""One training step, the optimizer, the LR schedule and the precision vocabulary of every loop.

An *objective* is any module with ``loss(images, labels) -> (loss, metrics)``: a method model
(phase 2) or a :class:`~caspl_plugin.boosting.BoostingDistiller` (phase 1).
"""
from __future__ import annotations

import contextlib
import math
import weakref
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from .. import distributed

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


def grad_scaler(optimizer: torch.optim.Optimizer, device: torch.device | str, precision: str):
    """The GradScaler of ``optimizer`` when ``precision`` computes in float16 on CUDA (``fp16``, and
    ``amp`` there): one per optimizer, kept across steps; else None."""
    if torch.device(device).type != "cuda" or autocast_dtype(device, precision) != torch.float16:
        return None
    scaler = _SCALERS.get(optimizer)
    if scaler is None:
        scaler = _SCALERS[optimizer] = torch.amp.GradScaler("cuda")
    return scaler


#: optimizer -> its GradScaler (fp16 on CUDA); weak, so a finished run's optimizer takes its scaler along
_SCALERS: "weakref.WeakKeyDictionary[torch.optim.Optimizer, torch.amp.GradScaler]" = weakref.WeakKeyDictionary()


def _learnable(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]


def _sync_gradients(params: list[nn.Parameter], finite: bool) -> bool:
    """Sum the (count-weighted) gradients over the processes in one all-reduce; True when every loss was finite.

    A parameter without a gradient on every process keeps ``grad=None`` (as in one process), so
    weight decay never touches it.
    """
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flags = torch.tensor([float(p.grad is not None) for p in params] + [0.0 if finite else 1.0], device=params[0].device)
    flat = torch.cat([g.detach().reshape(-1).to(torch.float32) for g in grads] + [flags])
    distributed.all_reduce_sum(flat)
    has_grad = flat[-1 - len(params):-1].tolist()
    offset = 0
    for p, g, present in zip(params, grads, has_grad):
        p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype) if present > 0 else None
        offset += g.numel()
    return bool(flat[-1] == 0)


def synced_step(
    objective: nn.Module,
    images: Optional[Tensor],
    labels,
    optimizer: torch.optim.Optimizer,
    precision: str = "fp32",
    *,
    weight: float = 1.0,
    batch: Optional[dict] = None,
) -> Optional[dict[str, float]]:
    """One optimisation step of a (possibly distributed) run: loss under autocast, backward, step.

    In a distributed run each process holds its share of the global batch; ``weight`` is that
    share's fraction of the global batch's readable images, so the summed gradients are exactly the
    gradient of the global batch's mean loss (one process: ``weight=1``, the plain step). A process
    whose share is empty (``images=None``) contributes nothing but still joins the all-reduce.
    fp16 on CUDA goes through the optimizer's GradScaler. Returns the metrics as floats (None for
    an empty share).
    """
    distributed_run = distributed.world_size() > 1
    device = next(objective.parameters()).device
    scaler = grad_scaler(optimizer, device, precision)
    optimizer.zero_grad(set_to_none=True)
    metrics, finite = None, True
    if images is not None:
        with autocast(device, precision):
            loss, metrics = objective.loss(images, labels, **(batch or {}))
        finite = bool(torch.isfinite(loss))
        if not finite and not distributed_run:
            raise FloatingPointError(f"Loss is {loss.item()}")
        if finite:
            if distributed_run:
                loss = loss * weight
            (scaler.scale(loss) if scaler is not None else loss).backward()
    if distributed_run:
        params = _learnable(optimizer)
        if not _sync_gradients(params, finite):
            raise FloatingPointError("Loss is not finite on at least one process")
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return None if metrics is None else {k: float(v) for k, v in metrics.items()}


def training_step(objective: nn.Module, images: Tensor, labels, optimizer: torch.optim.Optimizer, precision: str = "fp32", **batch) -> dict[str, float]:
    """One optimisation step: loss under autocast, backward, step. Returns the metrics as floats.

    Extra keyword arguments (e.g. cached ``teacher_logits``) are passed on to ``objective.loss``.
    fp16 on CUDA uses the optimizer's GradScaler (:func:`grad_scaler`).
    """
    return synced_step(objective, images, labels, optimizer, precision, batch=batch)


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
