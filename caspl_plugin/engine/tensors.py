"""In-memory tensors as a dataset of the one loop (:func:`~caspl_plugin.engine.train_epochs`): the
demos and quick experiments train on the engine's step and loop without a data loader of files."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

#: ``plan(epoch, batch_size, generator) -> batches`` (index lists), e.g. one domain per batch
BatchPlan = Callable[[int, int, torch.Generator], Sequence[Sequence[int]]]


class TensorData(Dataset):
    """``images`` (and ``labels``, and per-image ``extras`` such as cached teacher features or each
    image's domain) as items of the engine's data protocol.

    Every epoch's batches come from one generator seeded with ``seed`` and drawn epoch after epoch:
    a shuffled permutation cut into batches (the last one kept, however short), or ``plan``'s
    batches. They depend on the epoch alone, so a run is the same however it is resumed.
    """

    def __init__(self, images: Tensor, labels: Optional[Tensor] = None, *, seed: int = 0,
                 plan: Optional[BatchPlan] = None, **extras: Tensor):
        for name, values in {"labels": labels, **extras}.items():
            if values is not None and len(values) != len(images):
                raise ValueError(f"{name} has {len(values)} entries for {len(images)} images")
        self.images, self.seed, self.plan = images, int(seed), plan
        self.extras = {**({} if labels is None else {"labels": labels}), **extras}
        self._drawn: list[list[list[int]]] = []
        self._batch_size: Optional[int] = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index], str(index), {name: values[index] for name, values in self.extras.items()}

    def batches(self, epoch: int, batch_size: int, generator: torch.Generator, drop_last: bool) -> list[list[int]]:
        """Epoch ``epoch``'s batches (the loop's generator and ``drop_last`` are not used: this
        dataset draws from its own seed and keeps every image)."""
        if batch_size != self._batch_size:
            self._drawn, self._batch_size = [], batch_size
        if not self._drawn:
            self._generator = torch.Generator().manual_seed(self.seed)
        while len(self._drawn) <= epoch:
            self._drawn.append(self._draw(len(self._drawn), batch_size))
        return self._drawn[epoch]

    def _draw(self, epoch: int, batch_size: int) -> list[list[int]]:
        if self.plan is not None:
            return [list(map(int, index)) for index in self.plan(epoch, batch_size, self._generator)]
        order = torch.randperm(len(self.images), generator=self._generator).tolist()
        return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
