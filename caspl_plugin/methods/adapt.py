"""Phase 2 as a library call, the twin of :func:`~caspl_plugin.boosting.run_distillation`: train a
method's prompts (cascaded with frozen boosting prompts or not) with its own loss, on the engine's
one loop — resume, ``torchrun``, progress and TensorBoard as every command has them.

``caspl adapt``, the demos and the Dassl trainers' checkpoints use what is here: the settings
(:class:`AdaptSettings`, from a method's preset), the checkpoint state (learnable tensors and the
model's :meth:`~caspl_plugin.methods.PromptModel.training_state`, e.g. PromptSRC's aggregation).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from .. import distributed
from ..engine import LoopReport, TrainingRecipe, load_checkpoint, make_optimizer, save_checkpoint, train_epochs
from .base import PromptModel
from .registry import Preset

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "caspl-adapt-checkpoint"
OPTIMIZERS = ("sgd", "adamw")

#: What a run did (the engine's report): mean loss per epoch, steps, time, every image it had to skip.
AdaptReport = LoopReport


@dataclass(frozen=True)
class AdaptSettings(TrainingRecipe):
    """Training settings of the adapting phase: the shared :class:`~caspl_plugin.engine.TrainingRecipe`
    and the optimizer. A method's preset gives its published recipe (:meth:`from_preset`); the
    defaults are CoOp-family SGD with Dassl's cosine schedule."""

    optimizer: str = "sgd"

    def __post_init__(self):
        super().__post_init__()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")

    @classmethod
    def from_preset(cls, preset: Optional[Preset], **overrides) -> "AdaptSettings":
        """The preset's training recipe (its keys that are settings), then ``overrides`` (None values
        are left out: a flag not given keeps the preset's value)."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in (preset.train if preset else {}).items() if k in names}
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown adapt settings {unknown}; known: {sorted(names)}")
        return cls(**values)


def make_adapt_optimizer(model: PromptModel, settings: AdaptSettings) -> torch.optim.Optimizer:
    params = model.learnable_parameters()
    if settings.optimizer == "adamw":
        if not params:
            raise ValueError("Nothing to optimise: no parameter requires grad")
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return make_optimizer(params, settings.lr, settings.momentum, settings.weight_decay)


def checkpoint_tensors(model: PromptModel) -> dict:
    """The learnable tensors (``param.<name>``) and the model's training state (``state.<key>``)."""
    return {**{f"param.{k}": v for k, v in model.learnable_state_dict().items()},
            **{f"state.{k}": v for k, v in model.training_state().items()}}


def load_checkpoint_tensors(model: PromptModel, tensors: dict, max_epoch: int) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                params[key[len("param."):]].copy_(value)
    model.load_training_state({k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}, max_epoch)


def run_identity(model: PromptModel, settings: AdaptSettings, extra: Optional[dict] = None) -> dict:
    """What a checkpoint must match to resume this run exactly."""
    boosting = getattr(model.boosting, "artifact_sha256", None) if model.boosting is not None else None
    return {"method": model.method, "settings": model.settings(), "class_names": list(model.class_names),
            "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr, "seed": settings.seed,
            "optimizer": settings.optimizer, "world_size": distributed.world_size(), "boosting": boosting, **(extra or {})}


def run_adaptation(
    model: PromptModel,
    dataset: Dataset,
    settings: AdaptSettings = AdaptSettings(),
    *,
    checkpoint: Optional[Path] = None,
    resume: bool = False,
    progress: bool = True,
    tensorboard: Optional[str] = None,
    identity: Optional[dict] = None,
    on_epoch_end: Optional[Callable[[int, float], None]] = None,
    on_step: Optional[Callable[[dict], None]] = None,
) -> AdaptReport:
    """Learn ``model``'s prompts on ``dataset`` (items of the engine's data protocol with
    ``extras["labels"]``, e.g. :class:`~caspl_plugin.data.labeled.LabeledImages` or
    :class:`~caspl_plugin.engine.TensorData`) with the method's own loss; frozen groups stay frozen.

    Each epoch seeds its shuffling and augmentation from ``(seed, epoch)``; with ``checkpoint`` every
    epoch is saved (rank 0) and ``resume`` continues from it exactly (``identity``: more settings
    the checkpoint must match, e.g. the shots). Ctrl-C raises
    :class:`~caspl_plugin.engine.TrainingInterrupted`, the checkpoint on disk being a complete one.
    """
    optimizer = make_adapt_optimizer(model, settings)
    run_id = run_identity(model, settings, identity)
    start_epoch, report = 0, AdaptReport()
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        start_epoch, report, tensors, _ = load_checkpoint(Path(checkpoint), format=CHECKPOINT_FORMAT,
                                                          optimizer=optimizer, identity=run_id)
        load_checkpoint_tensors(model, tensors, settings.epochs)
        if distributed.is_main():
            logger.info("Resuming from %s at epoch %d/%d", checkpoint, start_epoch + 1, settings.epochs)
    elif resume and distributed.is_main():
        logger.warning("resume: no checkpoint at %s, starting from scratch", checkpoint)

    def save(next_epoch: int, report: AdaptReport) -> None:
        save_checkpoint(Path(checkpoint), format=CHECKPOINT_FORMAT, tensors=checkpoint_tensors(model),
                        optimizer=optimizer, next_epoch=next_epoch, report=report, identity=run_id,
                        metadata={"settings": asdict(settings)})

    config = settings.loop_config(progress="adapt" if progress else None, tensorboard=tensorboard)
    return train_epochs(model, dataset, optimizer, config, start_epoch=start_epoch, report=report,
                        save=save if checkpoint is not None else None, on_epoch_end=on_epoch_end, on_step=on_step)
