"""The boosting-phase training loop: epochs of :func:`~caspl_plugin.engine.training_step` over
unlabeled images, per-epoch LR schedule, a checkpoint every epoch and exact resume.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..artifacts.store import ArtifactError, load_artifact, save_artifact
from ..data.unlabeled import collate_skipping
from ..engine import epoch_lr, make_optimizer, set_lr, training_step
from .model import BoostingDistiller

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "caspl-distill-checkpoint"


@dataclass
class DistillSettings:
    """Training settings of the boosting phase (defaults: the authors' phase-1 recipe)."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 0.0025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    temperature: float = 1.0
    teacher_scale: str = "own"
    precision: str = "fp32"
    num_workers: int = 0
    seed: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")


@dataclass
class DistillReport:
    """What a run did: mean loss per epoch, steps, time, and every image it had to skip."""

    epoch_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    resumed_from_epoch: Optional[int] = None


def _checkpoint_tensors(distiller: BoostingDistiller, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"prompt.{k}": v for k, v in distiller.student.boosting.tensors().items()}
    for i, param in enumerate(optimizer.param_groups[0]["params"]):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{i}"] = buffer.detach()
    return {k: v.to("cpu").contiguous() for k, v in tensors.items()}


def save_checkpoint(path: Path, distiller, optimizer, epoch: int, report: DistillReport, settings: DistillSettings) -> None:
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": 1,
        "next_epoch": epoch,
        "settings": asdict(settings),
        "epoch_losses": report.epoch_losses,
        "steps": report.steps,
        "skipped": report.skipped,
        "class_names": list(distiller.student.class_names),
    }
    save_artifact(path, _checkpoint_tensors(distiller, optimizer), metadata)


def load_checkpoint(path: Path, distiller, optimizer, settings: DistillSettings) -> tuple[int, DistillReport]:
    tensors, metadata = load_artifact(path, expected_format=CHECKPOINT_FORMAT)
    if metadata["class_names"] != list(distiller.student.class_names):
        raise ArtifactError(f"Checkpoint {path} was made for other class names; remove it or drop --resume")
    saved = metadata["settings"]
    for key in ("batch_size", "lr", "epochs", "seed", "temperature"):
        if saved.get(key) != getattr(settings, key):
            raise ArtifactError(f"Checkpoint {path} was made with {key}={saved.get(key)!r}, this run has {getattr(settings, key)!r}")
    distiller.student.boosting.load_tensors({k[len("prompt."):]: v for k, v in tensors.items() if k.startswith("prompt.")})
    device = next(distiller.student.boosting.parameters()).device
    for i, param in enumerate(optimizer.param_groups[0]["params"]):
        if f"momentum.{i}" in tensors:
            optimizer.state[param]["momentum_buffer"] = tensors[f"momentum.{i}"].to(device)
    report = DistillReport(list(metadata["epoch_losses"]), int(metadata["steps"]), 0.0, list(metadata["skipped"]))
    report.resumed_from_epoch = int(metadata["next_epoch"])
    return int(metadata["next_epoch"]), report


def collate_with_extras(samples):
    """:func:`collate_skipping` for items ``(image, path)`` or ``(image, path, extras)``: returns
    ``(images or None, paths, skipped, extras)`` with each extra stacked over the readable items."""
    images, paths, skipped = collate_skipping([sample[:2] for sample in samples])
    good = [sample[2] for sample in samples if sample[0] is not None and len(sample) > 2]
    extras = {key: torch.stack([item[key] for item in good]) for key in good[0]} if good else {}
    return images, paths, skipped, extras


def run_distillation(
    distiller: BoostingDistiller,
    dataset: Dataset,
    settings: DistillSettings,
    *,
    checkpoint: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int, float], None]] = None,
    on_step: Optional[Callable[[dict], None]] = None,
) -> DistillReport:
    """Learn the student's boosting prompts; labels are never read.

    Each epoch seeds its shuffling and augmentation from ``(seed, epoch)``, so a run resumed from
    the checkpoint of epoch ``e`` continues exactly as the uninterrupted run would have.
    """
    from tqdm.auto import tqdm

    distiller.student.train()
    optimizer = make_optimizer(distiller.student.learnable_parameters(), settings.lr, settings.momentum, settings.weight_decay)
    start_epoch, report = 0, DistillReport()
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        start_epoch, report = load_checkpoint(Path(checkpoint), distiller, optimizer, settings)
        logger.info("Resuming from %s at epoch %d/%d", checkpoint, start_epoch + 1, settings.epochs)
    elif resume:
        logger.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint)
    skipped = set(report.skipped)
    started = time.perf_counter()
    for epoch in range(start_epoch, settings.epochs):
        lr = epoch_lr(epoch, settings.lr, settings.epochs, settings.warmup_epochs, settings.warmup_lr)
        set_lr(optimizer, lr)
        torch.manual_seed(settings.seed * 100003 + epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_size=settings.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= settings.batch_size,
            num_workers=settings.num_workers,
            collate_fn=collate_with_extras,
            generator=torch.Generator().manual_seed(settings.seed * 1000003 + epoch),
        )
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"distill epoch {epoch + 1}/{settings.epochs}", disable=not progress, leave=False)
        for images, _paths, bad, extras in bar:
            skipped.update(bad)
            if images is None:
                continue
            metrics = training_step(distiller, images, None, optimizer, settings.precision, **extras)
            total, count = total + metrics["loss"] * len(images), count + len(images)
            report.steps += 1
            if on_step is not None:
                on_step(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.2e}")
        if count == 0:
            raise RuntimeError("No readable image in the whole epoch: every file was skipped")
        report.epoch_losses.append(total / count)
        report.skipped = sorted(skipped)
        logger.info("epoch %d/%d  lr %.2e  kd loss %.4f  (%d images)", epoch + 1, settings.epochs, lr, total / count, count)
        if checkpoint is not None:
            save_checkpoint(Path(checkpoint), distiller, optimizer, epoch + 1, report, settings)
        if on_epoch_end is not None:
            on_epoch_end(epoch, total / count)
    report.seconds = time.perf_counter() - started
    return report


def export_artifact(
    path: Path,
    distiller: BoostingDistiller,
    student_geometry: dict,
    *,
    teacher: str,
    teacher_weights: Optional[str],
    dataset: Optional[str],
    settings: DistillSettings,
    report: Optional[DistillReport] = None,
):
    """Write the learned boosting prompts as a :class:`~caspl_plugin.artifacts.BoostingArtifact`."""
    from ..artifacts.boosting import BoostingArtifact

    group = distiller.student.boosting
    tensors = group.tensors()
    training = asdict(settings)
    if report is not None:
        training.update(final_kd_loss=report.epoch_losses[-1] if report.epoch_losses else None,
                        steps=report.steps, skipped_images=len(report.skipped))
    artifact = BoostingArtifact.from_group_tensors(
        tensors.get("text"), tensors.get("vision"),
        student=student_geometry, teacher=teacher, teacher_weights=teacher_weights,
        template=distiller.teacher.template, class_names=list(distiller.student.class_names),
        dataset=dataset, training=training,
    )
    artifact.save(path)
    return artifact
