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

import time
from pathlib import Path
from typing import Optional

import torch

from ..clip import create_clip
from ..data.domains import DomainClassSet
from ..files import atomic_write
from ..methods import ZeroShotCLIP, get_method
from ..prompts import PromptedCLIP
from ..toy import domain
from .runs import TEMPLATE, DemoResult, DemoSettings, TestSplit, adapt_toy_method, base_novel_accuracy, distill_toy_boosting, normalise
from .tables import chart_or_skip, csv_text, markdown_table, seed_caption, table_rows


def run_demo(settings: DemoSettings = DemoSettings(), progress: bool = True, result: Optional[DemoResult] = None) -> DemoResult:
    """Run the demo and return every measured accuracy (see the module docstring). Rows are added to
    ``result`` (a new one by default) as they finish, so an interrupted run still holds them."""
    from tqdm.auto import tqdm

    result = DemoResult() if result is None else result
    started = time.perf_counter()
    torch.manual_seed(0)
    student, teacher = create_clip("toy-student"), create_clip("toy-teacher")
    names = domain.class_names()
    base_labels, novel_labels = domain.base_labels(), domain.novel_labels()

    test = domain.generate(settings.test_per_class, seed=10_000)
    test_images = normalise(test.images, student)
    base_test = TestSplit(test_images, test.labels, base_labels)
    novel_test = TestSplit(test_images, test.labels, novel_labels)

    # zero-shot
    for label, backbone in (("Teacher, zero-shot", teacher), ("Student, zero-shot", student)):
        model = ZeroShotCLIP(PromptedCLIP(backbone), names, template=TEMPLATE)
        result.add(label, *base_novel_accuracy(model, base_test, novel_test))

    # boosting phase: unlabeled images of all classes, teacher features computed once
    step_started = time.perf_counter()
    unlabeled = normalise(domain.generate(settings.unlabeled_per_class, seed=20_000).images, student)
    distiller = distill_toy_boosting(student, teacher, [(DomainClassSet("toy-shapes", tuple(names), TEMPLATE), unlabeled)],
                                     settings, progress=progress)
    boosting = distiller.student.boosting
    result.add("Student + boosting", *base_novel_accuracy(distiller.student, base_test, novel_test))
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
        shot_images = normalise(shots.images, student)
        shot_labels = torch.tensor([base_labels.index(int(l)) for l in shots.labels])
        torch.manual_seed(seed)
        model = get_method(method)(clip, base_names, boosting=boosting if boosted else None, **kwargs)
        adapt_toy_method(model, shot_images, shot_labels, settings, seed)
        result.add(("CasPL_" if boosted else "") + label, *base_novel_accuracy(model, base_test, novel_test))
    result.seconds["adapting"] = time.perf_counter() - step_started
    result.seconds["total"] = time.perf_counter() - started
    return result


def write_outputs(result: DemoResult, out: Path, settings: DemoSettings) -> dict[str, Path]:
    """Markdown and CSV tables and a base/novel/HM bar chart with ± std error bars; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed_caption(settings.seeds)
    markdown = [
        f"# CasPL demo on ToyShapes ({seeds})", "",
        *([f"**Partial: {result.partial}.**", ""] if result.partial else []),
        "Accuracy (%) on base classes (among base) and novel classes (among novel); HM of the seed means.", "",
        *markdown_table(result), "",
        f"Time: {result.seconds.get('total', 0):.0f} s (boosting {result.seconds.get('boosting', 0):.0f} s, "
        f"adapting {result.seconds.get('adapting', 0):.0f} s).", "",
    ]
    paths = {"markdown": out / "demo_results.md", "csv": out / "demo_results.csv"}
    atomic_write(paths["markdown"], "\n".join(markdown).encode())
    atomic_write(paths["csv"], csv_text(result, settings.seeds).encode())
    title = f"CasPL on ToyShapes ({seeds})" + (" - partial" if result.partial else "")
    drawn = chart_or_skip(table_rows(result), out / "demo_results.png", title, seeds)
    return {**paths, **({"chart": drawn} if drawn else {})}
