"""The epoch loop of every training command (``caspl distill``, ``caspl adapt``), in one process or
under ``torchrun``.

Data protocol: a dataset item is ``(image_or_None, path)`` or ``(image_or_None, path, extras)``,
``extras`` a dict of per-sample tensors; ``extras["labels"]`` (if any) is passed as the labels, the
rest as keyword arguments: ``objective.loss(images, labels, **extras)``. A dataset may define
``set_epoch(epoch)`` (called at the start of every epoch) and ``batches(epoch, global_batch_size,
generator, drop_last) -> list[list[int]]`` (the epoch's global batches); the default plan is a
seeded permutation cut into global batches, the same order a ``DataLoader(shuffle=True)`` seeded
the same way gives.

Distributed: the global batch is the per-process batch x the world size; process ``r`` takes the
``r``-th share of every global batch, the gradients are summed weighted by each share's readable
images (:func:`~caspl_plugin.engine.step.synced_step`), so N processes follow the same trajectory as
one process running the global batch. Only rank 0 shows progress, writes checkpoints (the others
wait at a barrier) and tensorboard logs; metrics are averaged over the processes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from .step import set_lr, synced_step

logger = logging.getLogger(__name__)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or any KeyboardInterrupt) during training: the 1-based ``epoch`` and the ``step``
    within it where it stopped, and how many epochs the checkpoint on disk holds
    (``completed_epochs``; None when the loop keeps no checkpoint). Still a ``KeyboardInterrupt``."""

    def __init__(self, epoch: int, step: int, completed_epochs: Optional[int] = None):
        super().__init__(f"interrupted at epoch {epoch}, step {step}; resume with --resume")
        self.epoch, self.step, self.completed_epochs = epoch, step, completed_epochs


@dataclass
class LoopReport:
    """What a run did: mean loss and metrics per epoch, steps, time, every image it had to skip."""

    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    resumed_from_epoch: Optional[int] = None
    epoch_metrics: list[dict] = field(default_factory=list)
    #: readable images each epoch's incomplete last global batch leaves out (``drop_last``)
    left_out_per_epoch: int = 0


@dataclass
class LoopConfig:
    """How to run the epochs. ``batch_size`` is per process (global batch = batch_size x world size)."""

    epochs: int
    batch_size: int
    lr_at: Optional[Callable[[int], float]] = None  # None: the optimizer's own lr throughout
    seed: int = 1
    precision: str = "fp32"
    num_workers: int = 0
    progress: Optional[str] = None  # progress-bar label; None = no bars
    tensorboard: Optional[str] = None  # log folder (rank 0 writes)
    log_label: str = "loss"
    max_steps: Optional[int] = None  # stop after this many steps (the last epoch may be partial)


@dataclass
class Batch:
    """The readable images of a (per-process) batch, their paths and extras, and the unreadable paths."""

    images: Optional[Tensor]
    paths: list[str]
    skipped: list[str]
    extras: dict[str, Tensor]


def collate_items(samples: Sequence[tuple]) -> Batch:
    """Stack the readable items of ``samples`` (C1 items); unreadable ones (image None) are listed."""
    good = [s for s in samples if s[0] is not None]
    skipped = [s[1] for s in samples if s[0] is None]
    images = torch.stack([s[0] for s in good]) if good else None
    extras: dict[str, Tensor] = {}
    if good and len(good[0]) > 2:
        extras = {key: torch.stack([torch.as_tensor(s[2][key]) for s in good]) for key in good[0][2]}
    return Batch(images, [s[1] for s in good], skipped, extras)


def default_plan(size: int, global_batch_size: int, generator: torch.Generator, drop_last: bool) -> list[list[int]]:
    """A seeded permutation of ``range(size)`` cut into global batches (the last one dropped if short)."""
    order = torch.randperm(size, generator=generator).tolist()
    stop = size - size % global_batch_size if drop_last else size
    return [order[i:i + global_batch_size] for i in range(0, stop, global_batch_size)]


def share(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """Process ``rank``'s contiguous part of a global batch (sizes differ by at most one)."""
    base, extra = divmod(len(batch), world)
    start = rank * base + min(rank, extra)
    return list(batch[start:start + base + (1 if rank < extra else 0)])


def epoch_batches(dataset: Dataset, epoch: int, seed: int, global_batch_size: int) -> tuple[list[list[int]], torch.Generator]:
    """The epoch's global batches and the generator the data loader draws its worker seed from.

    Seeded from ``(seed, epoch)``, so a resumed run continues exactly. The plan consumes the
    generator as the loop this engine replaced did (a ``DataLoader(shuffle=True, generator=...)``
    iterated through ``tqdm.auto``, which opens two loader iterators: two worker-seed draws, then
    the permutation), so single-process runs keep their numbers.
    """
    generator = torch.Generator().manual_seed(seed * 1000003 + epoch)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    loader_generator = torch.Generator()
    loader_generator.set_state(generator.get_state())
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    drop_last = len(dataset) >= global_batch_size
    if hasattr(dataset, "batches"):
        plan = dataset.batches(epoch, global_batch_size, generator, drop_last)
    else:
        plan = default_plan(len(dataset), global_batch_size, generator, drop_last)
    return plan, loader_generator


class PlannedBatchSampler:
    """The engine's epoch plan (:func:`epoch_batches`: the dataset's ``batches()`` or the default
    seeded permutation) as a ``DataLoader`` batch sampler, for a loop that is not the engine's
    (Dassl's ``run_epoch``). Call :meth:`set_epoch` before every epoch; one process."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int):
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.epoch, self._plan = 0, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._plan = int(epoch), None

    def _batches(self) -> list[list[int]]:
        if self._plan is None:
            self._plan = epoch_batches(self.dataset, self.epoch, self.seed, self.batch_size)[0]
        return self._plan

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """The global RNG seed of the epoch's augmentation on process ``rank`` (rank 0 = one process)."""
    return seed * 100003 + epoch + 1_000_003 * rank


def _to(device: torch.device, batch: Batch) -> tuple[Optional[Tensor], dict[str, Tensor]]:
    images = None if batch.images is None else batch.images.to(device, non_blocking=True)
    return images, {k: v.to(device, non_blocking=True) for k, v in batch.extras.items()}


class _MetricMeans:
    """Metrics of a step averaged over the processes, weighted by their readable images."""

    def __init__(self):
        self.names: Optional[list[str]] = None

    def reduce(self, metrics: Optional[dict[str, float]], count: int, device: torch.device) -> dict[str, float]:
        if self.names is None:
            names = distributed.broadcast_object(sorted(metrics) if metrics else None)
            self.names = list(names) if names else None
        names = self.names or sorted(metrics or {})
        values = [float(count)] + [float((metrics or {}).get(k, 0.0)) * count for k in names]
        if distributed.world_size() == 1:
            return dict(metrics or {})
        vector = distributed.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=device))
        total = float(vector[0])
        return {k: float(v) / total for k, v in zip(names, vector[1:].tolist())} if total else {}


class _Tensorboard:
    """Dassl's scalar tags (``train/<metric>`` as the running epoch average, ``train/lr``); rank 0 only."""

    def __init__(self, folder: Optional[str]):
        self.writer = None
        if folder is not None and distributed.is_main():
            self.writer = open_tensorboard(folder)

    def write(self, means: dict[str, float], lr: float, step: int) -> None:
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar("train/" + name, value, step)
            self.writer.add_scalar("train/lr", lr, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_tensorboard(folder: str):
    """A tensorboard SummaryWriter on ``folder``; a clear ImportError when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ImportError(
            "--tensorboard needs the tensorboard package: pip install 'caspl-plugin[tensorboard]' (or pip install tensorboard)"
        ) from error
    Path(folder).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(folder))


def _objective_device(objective: nn.Module) -> torch.device:
    return next(objective.parameters()).device


def train_epochs(
    objective: nn.Module,
    dataset: Dataset,
    optimizer: torch.optim.Optimizer,
    config: LoopConfig,
    *,
    start_epoch: int = 0,
    report: Optional[LoopReport] = None,
    save: Optional[Callable[[int, LoopReport], None]] = None,
    on_epoch_end: Optional[Callable[[int, float], None]] = None,
    on_step: Optional[Callable[[dict], None]] = None,
) -> LoopReport:
    """Run epochs ``start_epoch .. config.epochs-1`` of ``objective`` on ``dataset``.

    Per epoch: ``lr_at(epoch)``, the dataset's ``set_epoch``, the seeded batch plan, one
    :func:`synced_step` per global batch, then ``objective.on_epoch_end(epoch, epochs)`` (if it has
    one), then ``save(next_epoch, report)`` on rank 0 (the others wait), then ``on_epoch_end(epoch,
    mean_loss)``; ``on_step(metrics)`` after every step. A KeyboardInterrupt becomes :class:`TrainingInterrupted` (where it happened).
    """
    from tqdm.auto import tqdm

    report = report if report is not None else LoopReport()
    rank, world = distributed.rank(), distributed.world_size()
    device = _objective_device(objective)
    global_batch_size = config.batch_size * world
    if len(dataset) < world:
        raise ValueError(f"{len(dataset)} training images cannot be shared by {world} processes")
    skipped = set(report.skipped)
    board = _Tensorboard(config.tensorboard)
    means = _MetricMeans()
    started = time.perf_counter()
    epoch, step = start_epoch, 0
    saved_epochs = start_epoch if save is not None else None
    drop_last = len(dataset) >= global_batch_size
    report.left_out_per_epoch = len(dataset) % global_batch_size if drop_last and not hasattr(dataset, "batches") else 0
    objective.train()
    try:
        for epoch in range(start_epoch, config.epochs):
            if config.lr_at is not None:
                set_lr(optimizer, config.lr_at(epoch))
            lr = optimizer.param_groups[0]["lr"]
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            torch.manual_seed(augmentation_seed(config.seed, epoch, rank))
            plan, loader_generator = epoch_batches(dataset, epoch, config.seed, global_batch_size)
            loader = DataLoader(
                dataset, batch_sampler=[share(b, rank, world) for b in plan], num_workers=config.num_workers,
                collate_fn=collate_items, generator=loader_generator,
            )
            total, count, sums = 0.0, 0, {}
            desc = f"{config.progress} epoch {epoch + 1}/{config.epochs}" if config.progress else None
            bar = tqdm(iter(loader), total=len(loader), desc=desc, leave=False,
                       disable=config.progress is None or not distributed.is_main())
            for step, batch in enumerate(bar):
                if config.max_steps is not None and report.steps >= config.max_steps:
                    break
                skipped.update(batch.skipped)
                local = 0 if batch.images is None else len(batch.images)
                counted = distributed.all_reduce_sum(torch.tensor([local], dtype=torch.float64, device=device))
                step_count = int(counted.item())
                if step_count == 0:
                    continue
                images, extras = _to(device, batch)
                labels = extras.pop("labels", None)
                metrics = synced_step(objective, images, labels, optimizer, config.precision,
                                      weight=local / step_count, batch=extras)
                metrics = means.reduce(metrics, local, device)
                total, count = total + metrics["loss"] * step_count, count + step_count
                for name, value in metrics.items():
                    sums[name] = sums.get(name, 0.0) + value * step_count
                report.steps += 1
                if on_step is not None:
                    on_step(metrics)
                board.write({k: v / count for k, v in sums.items()}, lr, epoch * len(plan) + step)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
            if count == 0:
                raise RuntimeError("No readable image in the whole epoch: every file was skipped")
            report.skipped = sorted({p for part in distributed.all_gather_object(sorted(skipped)) for p in part})
            skipped = set(report.skipped)
            report.epoch_losses.append(total / count)
            report.epoch_metrics.append({k: v / count for k, v in sums.items()})
            if distributed.is_main():
                extra = "  ".join(f"{k} {v / count:.4f}" for k, v in sums.items() if k != "loss")
                logger.info("epoch %d/%d  lr %.2e  %s %.4f  %s (%d images)", epoch + 1, config.epochs, lr,
                            config.log_label, total / count, extra, count)
            if hasattr(objective, "on_epoch_end"):
                objective.on_epoch_end(epoch, config.epochs)
            if save is not None:
                if distributed.is_main():
                    save(epoch + 1, report)
                distributed.barrier()
                saved_epochs = epoch + 1
            if on_epoch_end is not None:
                on_epoch_end(epoch, total / count)
            if config.max_steps is not None and report.steps >= config.max_steps:
                break
    except TrainingInterrupted:
        raise
    except KeyboardInterrupt as interrupt:
        raise TrainingInterrupted(epoch + 1, step + 1, saved_epochs) from interrupt
    finally:
        board.close()
    report.seconds = time.perf_counter() - started
    return report
