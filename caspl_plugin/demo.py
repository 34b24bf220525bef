"""``caspl demo``: the whole CasPL pipeline on the embedded toy domain, in about a minute on a CPU.

1. Data: ToyShapes images generated in memory — unlabeled images of all 36 classes (phase 1),
   16 labeled shots of the 18 base classes per seed (phase 2), and a fixed test set.
2. Zero-shot: the shipped ``toy-teacher`` and the weaker ``toy-student`` (pre-trained on base classes
   only) with the template "a photo of a {}.".
3. Boosting phase: boosting prompts for the student distilled from the teacher on the unlabeled
   images (the teacher's image features computed once: the images are fixed).
4. Adapting phase: CoOp and PromptSRC on the base shots, each with and without the frozen boosting
   prompts, for every seed; base accuracy on base classes, novel accuracy on novel classes, HM.

Every number is measured by the run. Results go to ``--out`` as Markdown, CSV and a bar chart.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .boosting import BoostingConfig, build_distiller
from .clip import create_clip
from .data.domains import DomainClassSet
from .engine import LoopConfig, TensorData, train_epochs
from .files import atomic_write
from .methods import AdaptSettings, ZeroShotCLIP, get_method, run_adaptation
from .prompts import PromptedCLIP
from .toy import domain

logger = logging.getLogger(__name__)

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

    def add(self, name: str, base: float, novel: float) -> None:
        row = self.rows.setdefault(name, {"base": [], "novel": []})
        row["base"].append(base)
        row["novel"].append(novel)


def _normalise(images: torch.Tensor, backbone) -> torch.Tensor:
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def _accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        logits = model(images[start:start + batch])
        correct += int((logits.argmax(-1) == labels[start:start + batch]).sum())
    return 100.0 * correct / len(images)


class _Split:
    """Test images of one half (base or novel) with labels relative to that half's class list."""

    def __init__(self, images, labels, half_labels: Sequence[int]):
        index = {label: i for i, label in enumerate(half_labels)}
        keep = torch.tensor([int(l) in index for l in labels])
        self.images = images[keep]
        self.labels = torch.tensor([index[int(l)] for l in labels[keep]])
        self.names = [domain.class_names()[l] for l in half_labels]


def _evaluate(model, base: _Split, novel: _Split) -> tuple[float, float]:
    model.set_class_names(base.names)
    base_acc = _accuracy(model, base.images, base.labels)
    model.set_class_names(novel.names)
    novel_acc = _accuracy(model, novel.images, novel.labels)
    return base_acc, novel_acc


def harmonic_mean(base: float, novel: float) -> float:
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def distill_toy_boosting(student, teacher, domains: Sequence[tuple], settings: "DemoSettings", *, seed: int = 0,
                         sampling: str = "size", progress: bool = False):
    """The demos' boosting phase on in-memory toy images: ``domains`` = ``(DomainClassSet,
    normalised images)`` pairs (one for per-domain boosting, several for universal prompts).

    The engine's loop (:func:`~caspl_plugin.engine.train_epochs` over :class:`~caspl_plugin.engine.TensorData`) with the batch plan of ``caspl distill --domain``
    (one domain per batch, :func:`~caspl_plugin.data.domains.plan_batches`), the teacher's image
    features computed once (the images are fixed; each batch's logits use its domain's class set),
    AdamW for ``settings.boost_steps`` steps. Returns the distiller, its boosting group frozen.
    """
    import math

    from .data.domains import plan_batches

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


def run_demo(settings: DemoSettings = DemoSettings(), progress: bool = True) -> DemoResult:
    """Run the demo and return every measured accuracy (see the module docstring)."""
    from tqdm.auto import tqdm

    result = DemoResult()
    started = time.perf_counter()
    torch.manual_seed(0)
    student, teacher = create_clip("toy-student"), create_clip("toy-teacher")
    names = domain.class_names()
    base_labels, novel_labels = domain.base_labels(), domain.novel_labels()

    test = domain.generate(settings.test_per_class, seed=10_000)
    test_images = _normalise(test.images, student)
    base_test = _Split(test_images, test.labels, base_labels)
    novel_test = _Split(test_images, test.labels, novel_labels)

    # zero-shot
    for label, backbone in (("Teacher, zero-shot", teacher), ("Student, zero-shot", student)):
        model = ZeroShotCLIP(PromptedCLIP(backbone), names, template=TEMPLATE)
        result.add(label, *_evaluate(model, base_test, novel_test))

    # boosting phase: unlabeled images of all classes, teacher features computed once
    step_started = time.perf_counter()
    unlabeled = _normalise(domain.generate(settings.unlabeled_per_class, seed=20_000).images, student)
    distiller = distill_toy_boosting(student, teacher, [(DomainClassSet("toy-shapes", tuple(names), TEMPLATE), unlabeled)],
                                     settings, progress=progress)
    boosting = distiller.student.boosting
    result.add("Student + boosting", *_evaluate(distiller.student, base_test, novel_test))
    result.seconds["boosting"] = time.perf_counter() - step_started

    # adapting phase: CoOp and PromptSRC, alone and cascaded, per seed
    clip = PromptedCLIP(student)
    methods = {
        "CoOp": ("coop", {"ctx_init": TEMPLATE.replace(" {}.", "")}),
        "PromptSRC": ("promptsrc", {"n_ctx_text": 4, "n_ctx_vision": 4, "depth_text": 4, "depth_vision": 4,
                                    "gpa_mean": settings.method_epochs * 0.75, "gpa_std": max(settings.method_epochs / 8, 1.0)}),
    }
    runs = [(seed, label, boosted) for seed in settings.seeds for label in methods for boosted in (False, True)]
    bar = tqdm(runs, desc="adapting", disable=not progress, leave=False)
    step_started = time.perf_counter()
    base_names = [names[l] for l in base_labels]
    for seed, label, boosted in bar:
        method, kwargs = methods[label]
        bar.set_postfix(seed=seed, method=("CasPL_" if boosted else "") + label)
        shots = domain.generate(labels=[l for l in base_labels for _ in range(settings.shots)], seed=seed)
        shot_images = _normalise(shots.images, student)
        shot_labels = torch.tensor([base_labels.index(int(l)) for l in shots.labels])
        torch.manual_seed(seed)
        model = get_method(method)(clip, base_names, boosting=boosting if boosted else None, **kwargs)
        adapt_toy_method(model, shot_images, shot_labels, settings, seed)
        result.add(("CasPL_" if boosted else "") + label, *_evaluate(model, base_test, novel_test))
    result.seconds["adapting"] = time.perf_counter() - step_started
    result.seconds["total"] = time.perf_counter() - started
    return result


def _mean_std(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.pstdev(values):.1f}"


def _std(values: Sequence[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


def table_rows(result: DemoResult) -> list[dict]:
    """One row per model: formatted cells, seed means, and the std over seeds (0 for one run)."""
    rows = []
    for name, row in result.rows.items():
        base, novel = statistics.mean(row["base"]), statistics.mean(row["novel"])
        per_seed_hm = [harmonic_mean(b, n) for b, n in zip(row["base"], row["novel"])]
        rows.append({
            "model": name, "base": _mean_std(row["base"]), "novel": _mean_std(row["novel"]),
            "hm": f"{harmonic_mean(base, novel):.1f}", "base_mean": base, "novel_mean": novel,
            "base_std": _std(row["base"]), "novel_std": _std(row["novel"]), "hm_std": _std(per_seed_hm),
            "runs": len(row["base"]),
        })
    return rows


def format_table(result: DemoResult) -> str:
    rows = table_rows(result)
    widths = [max(len("model"), *(len(r["model"]) for r in rows)), 13, 13, 6]
    lines = [f"{'model':<{widths[0]}}  {'base':>{widths[1]}}  {'novel':>{widths[2]}}  {'HM':>{widths[3]}}"]
    lines.append("-" * (sum(widths) + 6))
    for r in rows:
        lines.append(f"{r['model']:<{widths[0]}}  {r['base']:>{widths[1]}}  {r['novel']:>{widths[2]}}  {r['hm']:>{widths[3]}}")
    return "\n".join(lines)


def markdown_table(result: DemoResult) -> list[str]:
    return ["| model | base | novel | HM |", "|---|---:|---:|---:|",
            *[f"| {r['model']} | {r['base']} | {r['novel']} | {r['hm']} |" for r in table_rows(result)]]


def csv_text(result: DemoResult, seeds: Sequence[int]) -> str:
    """Seed means, HM, std over seeds and every per-seed value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", "runs", "base_mean", "novel_mean", "hm", "base_std", "novel_std",
                     *[f"base_seed{s}" for s in seeds], *[f"novel_seed{s}" for s in seeds]])
    for name, row in result.rows.items():
        base, novel = statistics.mean(row["base"]), statistics.mean(row["novel"])
        pad = [""] * (len(seeds) - len(row["base"]))
        writer.writerow([name, len(row["base"]), f"{base:.2f}", f"{novel:.2f}", f"{harmonic_mean(base, novel):.2f}",
                         f"{_std(row['base']):.2f}", f"{_std(row['novel']):.2f}",
                         *[f"{v:.2f}" for v in row["base"]], *pad, *[f"{v:.2f}" for v in row["novel"]], *pad])
    return buffer.getvalue()


def seed_caption(seeds: Sequence[int]) -> str:
    """How the chart and tables name the seeds of the run (exactly the seeds that ran)."""
    listed = ", ".join(map(str, seeds))
    return f"seed {listed}" if len(seeds) == 1 else f"seeds {listed}"


def write_outputs(result: DemoResult, out: Path, settings: DemoSettings) -> dict[str, Path]:
    """Markdown and CSV tables and a base/novel/HM bar chart with ± std error bars; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed_caption(settings.seeds)
    markdown = [
        f"# CasPL demo on ToyShapes ({seeds})", "",
        "Accuracy (%) on base classes (among base) and novel classes (among novel); HM of the seed means.", "",
        *markdown_table(result), "",
        f"Time: {result.seconds.get('total', 0):.0f} s (boosting {result.seconds.get('boosting', 0):.0f} s, "
        f"adapting {result.seconds.get('adapting', 0):.0f} s).", "",
    ]
    paths = {"markdown": out / "demo_results.md", "csv": out / "demo_results.csv"}
    atomic_write(paths["markdown"], "\n".join(markdown).encode())
    atomic_write(paths["csv"], csv_text(result, settings.seeds).encode())
    paths["chart"] = chart(table_rows(result), out / "demo_results.png", f"CasPL on ToyShapes ({seeds})", seeds)
    return paths


def chart(rows: list[dict], path: Path, title: str, seeds: str) -> Path:
    """Grouped bars (base, novel, HM) per model in the report's chart style
    (:func:`caspl_plugin.report.charts.base_novel_hm_figure`): ± std over seeds on base and novel
    where a row ran more than once, none on rows run once (zero-shot); HM of the seed means, as the
    table. PNG via atomic_write."""
    from .report.charts import METRIC_LABELS, Series, base_novel_hm_figure, save_png

    def series(key: str) -> Series:
        return Series(METRIC_LABELS[key], [r[f"{key}_mean"] for r in rows], [r[f"{key}_std"] for r in rows],
                      [r["runs"] for r in rows])

    hm = Series("HM", [harmonic_mean(r["base_mean"], r["novel_mean"]) for r in rows])
    figure = base_novel_hm_figure([r["model"] for r in rows], series("base"), series("novel"), hm, title,
                                  caption=f"model (error bars: ± std over phase-2 {seeds}; rows run once have none)",
                                  averages=())
    return save_png(figure, path)
