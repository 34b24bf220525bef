"""Checkpoints of the epoch loop: safetensors + JSON (no pickle), written atomically by rank 0.

A checkpoint holds the learnable tensors (named by the caller), the optimizer's momentum buffers,
the GradScaler state (fp16 on CUDA), the loop's report and the run's *identity* (settings that
must match for an exact resume: batch sizes, world size, lr, epochs, seed, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..artifacts.store import ArtifactError, load_artifact, save_artifact
from .loop import LoopReport
from .step import _SCALERS

FORMAT_VERSION = 1


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
    """The momentum buffers of ``optimizer``'s parameters, as ``momentum.<i>`` (parameter order)."""
    tensors = {}
    for i, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{i}"] = buffer.detach()
    return tensors


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]) -> None:
    for i, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        if f"momentum.{i}" in tensors:
            optimizer.state[param]["momentum_buffer"] = tensors[f"momentum.{i}"].to(param.device, param.dtype)


def save_checkpoint(
    path: Path,
    *,
    format: str,
    tensors: dict[str, Tensor],
    optimizer: torch.optim.Optimizer,
    next_epoch: int,
    report: LoopReport,
    identity: dict,
    metadata: Optional[dict] = None,
) -> None:
    """Write a resumable checkpoint (call on rank 0; the loop does)."""
    scaler = _SCALERS.get(optimizer)
    content = {
        "format": format,
        "format_version": FORMAT_VERSION,
        "next_epoch": next_epoch,
        "identity": identity,
        "epoch_losses": report.epoch_losses,
        "epoch_metrics": report.epoch_metrics,
        "steps": report.steps,
        "skipped": report.skipped,
        "grad_scaler": None if scaler is None else {k: float(v) if isinstance(v, float) else v for k, v in scaler.state_dict().items()},
        **(metadata or {}),
    }
    all_tensors = {**tensors, **optimizer_tensors(optimizer)}
    save_artifact(path, {k: v.detach().to("cpu").contiguous() for k, v in all_tensors.items()}, content)


def load_checkpoint(path: Path, *, format: str, optimizer: torch.optim.Optimizer, identity: dict) -> tuple[int, LoopReport, dict, dict]:
    """Read a checkpoint of this run: ``(next_epoch, report, tensors, metadata)``.

    Restores the optimizer's momentum (and GradScaler) state; a checkpoint of another run
    (any identity key differs) is refused, naming the key.
    """
    tensors, metadata = load_artifact(path, expected_format=format)
    saved = metadata.get("identity", {})
    for key, value in identity.items():
        if saved.get(key) != value:
            raise ArtifactError(f"Checkpoint {path} was made with {key}={saved.get(key)!r}, this run has {value!r}; "
                                f"remove it or drop --resume")
    load_optimizer_tensors(optimizer, tensors)
    if metadata.get("grad_scaler"):
        from .step import grad_scaler

        device = next(p for group in optimizer.param_groups for p in group["params"]).device
        scaler = grad_scaler(optimizer, device, "fp16")
        if scaler is not None:
            scaler.load_state_dict(metadata["grad_scaler"])
    report = LoopReport(list(metadata["epoch_losses"]), int(metadata["steps"]), 0.0, list(metadata["skipped"]),
                        int(metadata["next_epoch"]), list(metadata.get("epoch_metrics", [])))
    return int(metadata["next_epoch"]), report, tensors, metadata
