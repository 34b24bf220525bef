"""The training recipe both phases share (:class:`~caspl_plugin.boosting.DistillSettings` and
:class:`~caspl_plugin.methods.AdaptSettings` extend it): how long, how large a batch, SGD with
Dassl's warm-up and cosine schedule, precision, seed; checked once, turned into the loop's config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .loop import LoopConfig
from .step import PRECISIONS, epoch_lr


@dataclass(frozen=True)
class TrainingRecipe:
    """Settings of one training run on the engine's loop (each phase gives its own defaults)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    precision: str = "fp32"
    num_workers: int = 0
    seed: int = 1

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (:func:`~caspl_plugin.engine.epoch_lr`)."""
        return epoch_lr(epoch, self.lr, self.epochs, self.warmup_epochs, self.warmup_lr)

    def loop_config(self, *, progress: Optional[str] = None, tensorboard: Optional[str] = None,
                    log_label: str = "loss") -> LoopConfig:
        """The loop's configuration for this recipe."""
        return LoopConfig(epochs=self.epochs, batch_size=self.batch_size, lr_at=self.lr_at, seed=self.seed,
                          precision=self.precision, num_workers=self.num_workers, progress=progress,
                          tensorboard=tensorboard, log_label=log_label)
