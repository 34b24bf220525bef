"""The boosting phase on the engine's epoch loop (:func:`~caspl_plugin.engine.train_epochs`):
unlabeled images, Dassl's per-epoch LR schedule, a checkpoint every epoch and exact resume.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch.utils.data import Dataset

from .. import distributed
from ..artifacts.store import ArtifactError
from ..data.domains import SAMPLING
from ..engine import LoopReport, TrainingRecipe, make_optimizer, train_epochs
from ..engine import checkpoint as engine_checkpoint
from .model import BoostingDistiller

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "caspl-distill-checkpoint"


@dataclass(frozen=True)
class DistillSettings(TrainingRecipe):
    """Training settings of the boosting phase (defaults: the authors' phase-1 recipe): the shared
    :class:`~caspl_plugin.engine.TrainingRecipe` and the distillation's own."""

    epochs: int = 20
    batch_size: int = 4
    lr: float = 0.0025
    temperature: float = 1.0
    teacher_scale: str = "own"
    #: multi-domain phase 1: how domains are sampled (``size`` or ``even``); None for one domain
    domain_sampling: Optional[str] = None
    #: RandomResizedCrop area range of the training views
    crop_scale: tuple[float, float] = (0.08, 1.0)

    def __post_init__(self):
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        low, high = (float(v) for v in self.crop_scale)
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale expects 0 < min <= max <= 1, got {tuple(self.crop_scale)!r}")
        object.__setattr__(self, "crop_scale", (low, high))
        if self.domain_sampling is not None and self.domain_sampling not in SAMPLING:
            raise ValueError(f"domain_sampling must be {', '.join(map(repr, SAMPLING))} or None, got {self.domain_sampling!r}")


#: What a run did (the engine's report): mean loss per epoch, steps, time, every image it had to skip.
DistillReport = LoopReport

#: Settings a checkpoint must share with the run that resumes it.
_IDENTITY_KEYS = ("batch_size", "lr", "epochs", "seed", "temperature", "domain_sampling", "crop_scale")


def _identity(settings: DistillSettings) -> dict:
    values = {key: getattr(settings, key) for key in _IDENTITY_KEYS}
    values["crop_scale"] = list(values["crop_scale"])  # as JSON reads it back
    return {**values, "world_size": distributed.world_size()}


def save_checkpoint(path: Path, distiller, optimizer, epoch: int, report: DistillReport, settings: DistillSettings) -> None:
    tensors = {f"prompt.{k}": v for k, v in distiller.student.boosting.tensors().items()}
    engine_checkpoint.save_checkpoint(
        path, format=CHECKPOINT_FORMAT, tensors=tensors, optimizer=optimizer, next_epoch=epoch, report=report,
        identity=_identity(settings),
        metadata={"settings": asdict(settings), "class_names": distiller.class_set_identity()},
    )


def load_checkpoint(path: Path, distiller, optimizer, settings: DistillSettings) -> tuple[int, DistillReport]:
    next_epoch, report, tensors, metadata = engine_checkpoint.load_checkpoint(
        path, format=CHECKPOINT_FORMAT, optimizer=optimizer, identity=_identity(settings))
    if metadata["class_names"] != distiller.class_set_identity():
        raise ArtifactError(f"Checkpoint {path} was made for other class names; remove it or drop --resume")
    distiller.student.boosting.load_tensors({k[len("prompt."):]: v for k, v in tensors.items() if k.startswith("prompt.")})
    return next_epoch, report


def run_distillation(
    distiller: BoostingDistiller,
    dataset: Dataset,
    settings: DistillSettings,
    *,
    checkpoint: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Optional[Callable[[int, float], None]] = None,
    tensorboard: Optional[str] = None,
    known_unreadable: Sequence[str] = (),
    on_step: Optional[Callable[[dict], None]] = None,
) -> DistillReport:
    """Learn the student's boosting prompts with the engine's epoch loop; labels are never read.

    Each epoch seeds its shuffling and augmentation from ``(seed, epoch)``, so a run resumed from
    the checkpoint of epoch ``e`` continues exactly as the uninterrupted run would have. Under
    ``torchrun`` ``settings.batch_size`` is per process (global batch = batch_size x world size).
    ``known_unreadable``: images found unreadable before training (not in ``dataset``); they are
    counted in ``report.skipped`` with any that fail at run time. Ctrl-C raises
    :class:`~caspl_plugin.engine.TrainingInterrupted`, the checkpoint on disk being a complete one.
    """
    sampling = getattr(dataset, "sampling", None)  # a multi-domain dataset's; recorded in the checkpoint
    if settings.domain_sampling is None and sampling is not None:
        settings = replace(settings, domain_sampling=sampling)
    elif settings.domain_sampling != sampling:
        raise ValueError(f"settings.domain_sampling is {settings.domain_sampling!r} but the dataset samples its domains "
                         f"with {sampling!r}; give the same value to both")
    distiller.student.train()
    optimizer = make_optimizer(distiller.student.learnable_parameters(), settings.lr, settings.momentum, settings.weight_decay)
    start_epoch, report = 0, DistillReport()
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        start_epoch, report = load_checkpoint(Path(checkpoint), distiller, optimizer, settings)
        if distributed.is_main():
            logger.info("Resuming from %s at epoch %d/%d", checkpoint, start_epoch + 1, settings.epochs)
    elif resume and distributed.is_main():
        logger.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint)
    report.skipped = sorted(set(report.skipped) | {str(path) for path in known_unreadable})
    config = settings.loop_config(progress="distill" if progress else None, tensorboard=tensorboard, log_label="kd loss")

    def save(next_epoch: int, report: DistillReport) -> None:
        save_checkpoint(Path(checkpoint), distiller, optimizer, next_epoch, report, settings)

    return train_epochs(distiller, dataset, optimizer, config, start_epoch=start_epoch, report=report,
                        save=save if checkpoint is not None else None, on_epoch_end=on_epoch_end, on_step=on_step)


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
    domains: Optional[list] = None,
):
    """Write the learned boosting prompts as a :class:`~caspl_plugin.artifacts.BoostingArtifact`.

    ``domains`` (multi-domain phase 1): one JSON record per domain, e.g.
    :meth:`caspl_plugin.data.domains.DomainSource.metadata`; the artifact then has no single class
    list or template (``class_names`` and ``template`` are None) and lists its domains instead.
    """
    from ..artifacts.boosting import BoostingArtifact

    group = distiller.student.boosting
    tensors = group.tensors()
    training = asdict(settings)
    if report is not None:
        training.update(final_kd_loss=report.epoch_losses[-1] if report.epoch_losses else None,
                        steps=report.steps, skipped_images=len(report.skipped),
                        left_out_per_epoch=report.left_out_per_epoch)
    artifact = BoostingArtifact.from_group_tensors(
        tensors.get("text"), tensors.get("vision"),
        student=student_geometry, teacher=teacher, teacher_weights=teacher_weights,
        template=None if domains else distiller.teacher.template,
        class_names=None if domains else list(distiller.student.class_names),
        dataset=dataset, training=training, domains=domains,
    )
    artifact.save(path)
    return artifact
