"""``caspl demo --universal``: universal boosting prompts (one phase 1 for several domains) on ToyShapes.

1. Domains: ToyShapes variants with the same 36 classes and base/novel split but other image
   statistics (:data:`caspl_plugin.toy.domain.VARIANTS`), each with its own teacher template.
2. Universal boosting: one boosting group distilled from the ``toy-teacher`` on the unlabeled images
   of the *seen* domains, every batch from one domain, over that domain's class set and template
   (:func:`caspl_plugin.data.domains.plan_batches`, the same plan ``caspl distill --domain`` uses).
3. Per-domain boosting (the upper reference): the same recipe on the held-out domain's own images.
4. On the held-out domain, never seen by the universal prompts: teacher and student zero-shot,
   student + per-domain / + universal boosting, and CoOp alone and cascaded with either, over seeds.
5. On each seen domain: student zero-shot vs student + universal boosting (where they were trained).

Every number is measured by the run; results go to ``--out`` as Markdown, CSV and a chart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..boosting import boosting_student
from ..clip import create_clip
from ..data.domains import DomainClassSet
from ..files import atomic_write
from ..methods import ZeroShotCLIP, get_method
from ..prompts import PromptedCLIP
from ..toy import domain
from .runs import DemoResult, DemoSettings, TestSplit, adapt_toy_method, base_novel_accuracy, distill_toy_boosting, normalise
from .tables import chart_or_skip, csv_text, markdown_table, seed_caption, table_rows

COOP_INIT = "a photo of a"


@dataclass
class UniversalSettings(DemoSettings):
    """The universal demo's recipe (the demo's, on fewer images per domain); ``quick()`` is a
    smaller version for smoke tests."""

    seen: Sequence[str] = ("plain", "textured", "outline", "small")
    held_out: str = "pastel"
    sampling: str = "even"
    unlabeled_per_class: int = 12
    test_per_class: int = 15
    shots: int = 8
    boost_steps: int = 120
    boost_batch: int = 96
    method_epochs: int = 8

    def __post_init__(self):
        unknown = [v for v in (*self.seen, self.held_out) if v not in domain.VARIANTS]
        if unknown:
            raise ValueError(f"unknown toy domain(s) {unknown}; expected some of {list(domain.VARIANTS)}")
        if self.held_out in self.seen:
            raise ValueError(f"the held-out domain {self.held_out!r} must not be among the seen domains {list(self.seen)}")

    @classmethod
    def quick(cls, seeds: Sequence[int] = (1,)) -> "UniversalSettings":
        return cls(seeds=seeds, seen=("plain", "textured", "outline"), unlabeled_per_class=6, test_per_class=6,
                   shots=4, boost_steps=30, boost_batch=64, method_epochs=4)


@dataclass
class UniversalResult:
    held_out: DemoResult = field(default_factory=DemoResult)
    seen: DemoResult = field(default_factory=DemoResult)
    seconds: dict = field(default_factory=dict)


def _class_set(variant: str) -> DomainClassSet:
    return DomainClassSet(variant, tuple(domain.class_names()), domain.VARIANT_TEMPLATES[variant])


def _test_splits(variant: str, per_class: int, backbone) -> tuple[TestSplit, TestSplit]:
    test = domain.generate(per_class, seed=10_000, variant=variant)
    images = normalise(test.images, backbone)
    return TestSplit(images, test.labels, domain.base_labels()), TestSplit(images, test.labels, domain.novel_labels())


def run_universal_demo(settings: UniversalSettings = UniversalSettings(), progress: bool = True,
                       result: Optional[UniversalResult] = None) -> UniversalResult:
    """Run the universal demo and return every measured accuracy (see the module docstring). Rows are
    added to ``result`` (a new one by default) as they finish, so an interrupted run still holds them."""
    from tqdm.auto import tqdm

    result = UniversalResult() if result is None else result
    started = time.perf_counter()
    torch.manual_seed(0)
    student, teacher = create_clip("toy-student"), create_clip("toy-teacher")
    names = domain.class_names()
    held = settings.held_out
    tests = {v: _test_splits(v, settings.test_per_class, student) for v in (*settings.seen, held)}

    def unlabeled(variant: str, k: int) -> torch.Tensor:
        return normalise(domain.generate(settings.unlabeled_per_class, seed=20_000 + k, variant=variant).images, student)

    def zero_shot(backbone, variant: str) -> tuple[float, float]:
        model = ZeroShotCLIP(PromptedCLIP(backbone), names, template=domain.VARIANT_TEMPLATES[variant])
        return base_novel_accuracy(model, *tests[variant])

    def boosted(group, variant: str) -> tuple[float, float]:
        return base_novel_accuracy(boosting_student(PromptedCLIP(student), names, group), *tests[variant])

    def timed(part: str, run):
        step = time.perf_counter()
        value = run()
        result.seconds[part] = result.seconds.get(part, 0.0) + time.perf_counter() - step
        return value

    seen_data = [(_class_set(v), unlabeled(v, k)) for k, v in enumerate(settings.seen)]
    held_data = [(_class_set(held), unlabeled(held, len(settings.seen)))]
    clip = PromptedCLIP(student)
    base_labels = domain.base_labels()
    base_names = [names[l] for l in base_labels]
    rows = result.held_out
    for index, seed in enumerate(settings.seeds):
        first = index == 0
        # phase 1 per seed (prompt initialisation and batch order): the boosting rows have a spread too
        def boosting(domains):
            return distill_toy_boosting(student, teacher, domains, settings, seed=seed, sampling=settings.sampling,
                                        progress=progress).student.boosting

        universal = timed("universal boosting", lambda: boosting(seen_data))
        per_domain = timed("per-domain boosting", lambda: boosting(held_data))
        if first:  # deterministic: one run
            rows.add("Teacher, zero-shot", *zero_shot(teacher, held))
            rows.add("Student, zero-shot", *zero_shot(student, held))
        rows.add("Student + per-domain boosting", *boosted(per_domain, held))
        rows.add("Student + universal boosting", *boosted(universal, held))
        for variant in settings.seen:
            if first:
                result.seen.add(f"{variant}: student, zero-shot", *zero_shot(student, variant))
            result.seen.add(f"{variant}: + universal boosting", *boosted(universal, variant))

        variants = (("CoOp", None), ("CasPL_CoOp (per-domain)", per_domain), ("CasPL_CoOp (universal)", universal))
        shots = domain.generate(labels=[l for l in base_labels for _ in range(settings.shots)], seed=seed, variant=held)
        shot_labels = torch.tensor([base_labels.index(int(l)) for l in shots.labels])
        for label, group in tqdm(variants, desc=f"adapting (seed {seed})", disable=not progress, leave=False):
            torch.manual_seed(seed)
            model = get_method("coop")(clip, base_names, boosting=group, ctx_init=COOP_INIT)
            timed("adapting", lambda: adapt_toy_method(model, normalise(shots.images, student), shot_labels, settings, seed))
            rows.add(label, *base_novel_accuracy(model, *tests[held]))
    result.seconds["total"] = time.perf_counter() - started
    return result


def verdict(result: UniversalResult) -> str:
    """One sentence on whether the universal prompts help on the held-out domain, from the numbers."""
    rows = {r["model"]: r for r in table_rows(result.held_out)}
    zero, uni = float(rows["Student, zero-shot"]["hm"]), float(rows["Student + universal boosting"]["hm"])
    coop, cascade = float(rows["CoOp"]["hm"]), float(rows["CasPL_CoOp (universal)"]["hm"])
    seen = table_rows(result.seen)
    gains = [float(seen[i + 1]["hm"]) - float(seen[i]["hm"]) for i in range(0, len(seen), 2)]
    held = ("help" if uni > zero else "do not help") + f" the student zero-shot on the held-out domain (HM {zero:.1f} -> {uni:.1f})"
    adapt = ("help" if cascade > coop else "do not help") + f" CoOp there (HM {coop:.1f} -> {cascade:.1f})"
    return (f"Universal boosting prompts {held} and {adapt}; on the seen domains they change the student's HM "
            f"by {', '.join(f'{g:+.1f}' for g in gains)}.")


def write_universal_outputs(result: UniversalResult, out: Path, settings: UniversalSettings) -> dict[str, Path]:
    """Markdown (both tables), CSVs and the held-out chart with ± std error bars; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed_caption(settings.seeds)
    seconds = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items() if k != "total")
    markdown = [
        f"# Universal boosting prompts on ToyShapes domains ({seeds})", "",
        f"Universal prompts distilled on {', '.join(settings.seen)} ({settings.sampling} sampling, one domain per batch); "
        f"held-out domain: **{settings.held_out}** ({domain.VARIANTS[settings.held_out]}). Accuracy (%) on base "
        "classes (among base) and novel classes (among novel); HM of the seed means.", "",
        *([f"**Partial: {result.held_out.partial}.**", ""] if result.held_out.partial else []),
        f"## Held-out domain: {settings.held_out}", "", *markdown_table(result.held_out), "",
        "## Seen domains", "", *markdown_table(result.seen), "",
        *([] if result.held_out.partial else [verdict(result), ""]),
        f"Time: {result.seconds.get('total', 0):.0f} s ({seconds}).", "",
    ]
    paths = {"markdown": out / "universal_results.md", "csv": out / "universal_results.csv",
             "seen_csv": out / "universal_seen_domains.csv"}
    atomic_write(paths["markdown"], "\n".join(markdown).encode())
    atomic_write(paths["csv"], csv_text(result.held_out, settings.seeds).encode())
    atomic_write(paths["seen_csv"], csv_text(result.seen, settings.seeds).encode())
    drawn = chart_or_skip(table_rows(result.held_out), out / "universal_results.png",
                          f"Universal boosting prompts, held-out domain {settings.held_out} ({seeds})"
                          + (" - partial" if result.held_out.partial else ""), seeds)
    return {**paths, **({"chart": drawn} if drawn else {})}
