"""What both demos run: their recipe and result types, in-memory toy data, accuracy on base and
novel halves, and the two phases on the engine (:func:`distill_toy_boosting`, :func:`adapt_toy_method`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..boosting import BoostingConfig, build_distiller
from ..data.domains import plan_batches
from ..engine import LoopConfig, TensorData, train_epochs
from ..methods import AdaptSettings, run_adaptation
from ..toy import domain

#: the class template of the toy domain's default variant
TEMPLATE = "a photo of a {}."


@dataclass
class DemoSettings:
    """The demo's recipe; ``quick()`` is a smaller version for smoke tests."""

    seeds: Sequence[int] = (1, 2, 3)
    unlabeled_per_class: int = 60
    test_per_class: int = 30
    shots: int = 16
    boost_tokens: int = 4
    boost_depth: int = 4
    boost_steps: int = 300
    boost_batch: int = 128
    boost_lr: float = 5e-3
    method_epochs: int = 20
    method_batch: int = 32
    method_lr: float = 2e-3

    @classmethod
    def quick(cls, seeds: Sequence[int] = (1,)) -> "DemoSettings":
        return cls(seeds=seeds, unlabeled_per_class=20, test_per_class=10, boost_steps=60, method_epochs=5)


@dataclass
class DemoResult:
    rows: dict = field(default_factory=dict)  # name -> {"base": [...], "novel": [...]}
    seconds: dict = field(default_factory=dict)
    #: set when the run was interrupted: what it had finished (the rows hold only that)
    partial: str = ""

    def add(self, name: str, base: float, novel: float) -> None:
        row = self.rows.setdefault(name, {"base": [], "novel": []})
        row["base"].append(base)
        row["novel"].append(novel)


def normalise(images: torch.Tensor, backbone) -> torch.Tensor:
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(images[start:start + batch])
        correct += int((logits.argmax(-1) == labels[start:start + batch]).sum())
    return 100.0 * correct / len(images)


class TestSplit:
    """Test images of one half (base or novel) with labels relative to that half's class list."""

    def __init__(self, images, labels, half_labels: Sequence[int]):
        index = {label: i for i, label in enumerate(half_labels)}
        keep = torch.tensor([int(l) in index for l in labels])
        self.images = images[keep]
        self.labels = torch.tensor([index[int(l)] for l in labels[keep]])
        self.names = [domain.class_names()[l] for l in half_labels]


def base_novel_accuracy(model, base: TestSplit, novel: TestSplit) -> tuple[float, float]:
    model.set_class_names(base.names)
    base_acc = accuracy(model, base.images, base.labels)
    model.set_class_names(novel.names)
    novel_acc = accuracy(model, novel.images, novel.labels)
    return base_acc, novel_acc


def distill_toy_boosting(student, teacher, domains: Sequence[tuple], settings: "DemoSettings", *, seed: int = 0,
                         sampling: str = "size", progress: bool = False):
    """The demos' boosting phase on in-memory toy images: ``domains`` = ``(DomainClassSet,
    normalised images)`` pairs (one for per-domain boosting, several for universal prompts).

    The engine's loop (:func:`~caspl_plugin.engine.train_epochs` over :class:`~caspl_plugin.engine.TensorData`) with the batch plan of ``caspl distill --domain``
    (one domain per batch, :func:`~caspl_plugin.data.domains.plan_batches`), the teacher's image
    features computed once (the images are fixed; each batch's logits use its domain's class set),
    AdamW for ``settings.boost_steps`` steps. Returns the distiller, its boosting group frozen.
    """
    config = BoostingConfig(settings.boost_tokens, settings.boost_tokens, settings.boost_depth, settings.boost_depth, ctx_init="")
    distiller = build_distiller(student, teacher, None, None, config, generator=torch.Generator().manual_seed(seed),
                                domains=[classes for classes, _ in domains])
    sizes = [len(images) for _, images in domains]
    offsets = [sum(sizes[:d]) for d in range(len(sizes))]
    images = torch.cat([images for _, images in domains])
    features = torch.cat([distiller.teacher_features(chunk) for chunk in images.split(512)])
    domain_of = torch.cat([torch.full((size,), d, dtype=torch.long) for d, size in enumerate(sizes)])

    def plan(epoch: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
        batches = plan_batches(sizes, batch_size, generator, drop_last=True, sampling=sampling)
        return [[offsets[d] + i for i in index] for d, index in batches]

    per_epoch = len(plan(0, settings.boost_batch, torch.Generator()))  # the plan's length does not depend on the draw
    optimizer = torch.optim.AdamW(distiller.student.learnable_parameters(), lr=settings.boost_lr, weight_decay=0.0)
    data = TensorData(images, seed=seed, plan=plan, teacher_features=features, domain=domain_of)
    train_epochs(distiller, data, optimizer, LoopConfig(
        epochs=math.ceil(settings.boost_steps / per_epoch), batch_size=settings.boost_batch, seed=seed,
        max_steps=settings.boost_steps, progress=f"boosting ({'+'.join(c.name for c, _ in domains)})" if progress else None,
    ))
    distiller.student.boosting.set_learnable(False)
    return distiller


def adapt_toy_method(model, images: torch.Tensor, labels: torch.Tensor, settings: "DemoSettings", seed: int):
    """The demos' adapting phase (:func:`~caspl_plugin.methods.run_adaptation`): AdamW and a per-epoch
    cosine lr on in-memory shots; returns ``model``."""
    recipe = AdaptSettings(epochs=settings.method_epochs, batch_size=settings.method_batch, lr=settings.method_lr,
                           optimizer="adamw", weight_decay=0.0, warmup_epochs=0, seed=seed)
    run_adaptation(model, TensorData(images, labels, seed=seed), recipe, progress=False)
    return model
