"""The one training engine of every loop: ``caspl distill``, ``caspl adapt``, the demo and the Dassl
trainers' steps, in one process or under ``torchrun``.

- :mod:`.step`: the precision vocabulary (:data:`PRECISIONS`, :func:`autocast`), one optimisation
  step (:func:`training_step`; :func:`synced_step` in a distributed run), SGD and Dassl's schedule;
- :mod:`.loop`: the epoch loop over a dataset (:func:`train_epochs`), its batch plan and logs;
- :mod:`.checkpoint`: resumable checkpoints (safetensors + JSON);
- :mod:`.evaluate`: accuracy over a labeled dataset;
- :mod:`.recipe`: the training settings both phases share (:class:`TrainingRecipe`);
- :mod:`.tensors`: in-memory tensors as a dataset of the loop (the demos).

An *objective* is any module with ``loss(images, labels, **extras) -> (loss, metrics)``: a method
model (phase 2) or a :class:`~caspl_plugin.boosting.BoostingDistiller` (phase 1).

Imports artifacts (checkpoints) and distributed only; it knows objectives, not methods.
"""
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import EvalResult, evaluate
from .loop import (
    LoopConfig,
    LoopReport,
    PlannedBatchSampler,
    TrainingInterrupted,
    collate_items,
    open_tensorboard,
    train_epochs,
)
from .step import (
    PRECISIONS,
    autocast,
    autocast_dtype,
    epoch_lr,
    grad_scaler,
    make_optimizer,
    set_lr,
    synced_step,
    training_step,
)
from .recipe import TrainingRecipe
from .tensors import TensorData

__all__ = [
    "PRECISIONS", "autocast", "autocast_dtype", "epoch_lr", "grad_scaler", "make_optimizer", "set_lr",
    "synced_step", "training_step", "TrainingRecipe", "TensorData", "LoopConfig", "LoopReport", "PlannedBatchSampler", "TrainingInterrupted", "collate_items",
    "open_tensorboard", "train_epochs", "load_checkpoint", "save_checkpoint", "EvalResult", "evaluate",
]
