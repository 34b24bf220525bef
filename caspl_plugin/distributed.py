"""torch.distributed for every loop: one process, or one process per device under ``torchrun``.

A run is distributed when ``torchrun`` (or any ``env://`` launcher) set ``WORLD_SIZE > 1``;
:func:`setup` then joins the process group — nccl on CUDA, gloo on CPU — and pins each process to
its local device. Outside such a launcher every helper here answers as a single process does
(rank 0 of 1), so the same code path serves both.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist


def launched() -> bool:
    """True when the environment asks for more than one process (torchrun's ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0: the only process that writes checkpoints, artifacts and logs."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; return this process's device.

    On CUDA each process takes ``cuda:LOCAL_RANK`` (nccl); otherwise gloo on ``device``.
    Idempotent; a single process is returned ``device`` unchanged.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    if not is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over the processes, in place (a no-op in one process)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place (a no-op in one process)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: object, src: int = 0) -> object:
    """``value`` of rank ``src`` on every process (a no-op in one process)."""
    if not (is_initialized() and world_size() > 1):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: object) -> list:
    """``value`` of every process, in rank order (``[value]`` in one process)."""
    if not (is_initialized() and world_size() > 1):
        return [value]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def cleanup() -> None:
    """Leave the process group (if this process joined one)."""
    if is_initialized():
        dist.destroy_process_group()


def rank_suffix() -> Optional[str]:
    """``"rank R/W"`` for log lines in a distributed run, None in one process."""
    return f"rank {rank()}/{world_size()}" if world_size() > 1 else None
