"""The CasPL cascade: any method plus frozen boosting prompts from a phase-1 artifact.

The boosting group is loaded, checked against the student it is placed into, frozen (unless the
ablation flag makes it learnable) and placed by the prompt mechanism in CasPL's order next to the
method's own prompts; the method's losses are untouched.

Boosting depth (``boosting_depth``): ``"artifact"`` (default) places the boosting prompts at the depths
they were trained with. ``"method"`` is the authors' rule in ``CasPL_PromptSRC``: the boosting prompts
get the *method's* prompt depth — trained layers are kept up to that depth, deeper trained layers are
dropped, and layers the artifact lacks are filled with frozen random N(0, 0.02) tokens drawn from
``torch.Generator().manual_seed(seed)`` (one ``[depth, n, width]`` draw per encoder, text first),
``seed`` being ``boosting_seed`` or, by default, the run's seed (what ``torch.manual_seed`` was last
given, as the authors draw them from the run's seeded RNG): seeds 1/2/3 get their own fillers.
Methods without deep prompts of their own (CoOp, CoCoOp) keep the artifact's depth.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Optional, Sequence, Tuple, Union

import torch

from ..artifacts.boosting import BoostingArtifact
from ..prompts import PromptedCLIP, PromptGroup, PromptSpec
from .base import PromptModel
from .registry import get_method

logger = logging.getLogger(__name__)

BoostingSource = Union[str, os.PathLike, BoostingArtifact, PromptGroup, None]
#: where the boosting prompts' depths come from in phase 2
BOOSTING_DEPTHS = ("artifact", "method")
#: std of the random boosting tokens filling layers the artifact lacks (the authors' init)
FILL_STD = 0.02


def check_boosting_depth(boosting_depth: str) -> str:
    if boosting_depth not in BOOSTING_DEPTHS:
        raise ValueError(f"boosting depth must be one of {BOOSTING_DEPTHS}, got {boosting_depth!r}")
    return boosting_depth


def boosting_group_from_artifact(
    artifact: BoostingArtifact,
    geometry: dict,
    *,
    learnable: bool = False,
    method_depth: Optional[Tuple[int, int]] = None,
    seed: int = 0,
) -> PromptGroup:
    """The artifact's boosting :class:`PromptGroup` for a CLIP of ``geometry`` (checked for fit).

    ``geometry`` has the keys of ``Backbone.describe()`` (widths, depths, backbone name).
    ``method_depth=(text, vision)`` applies the authors' depth rule (module docstring): the group
    gets those depths, trained layers are kept up to them and missing ones are seeded N(0, 0.02).
    ``group.placement_sha256`` identifies what is placed (the artifact, and the rule and seed if used).
    """
    artifact.check_compatible(geometry)
    depth_text, depth_vision = max(artifact.depth_text, 1), max(artifact.depth_vision, 1)
    if method_depth is not None:
        depth_text, depth_vision = (max(int(d), 1) for d in method_depth)
    spec = PromptSpec(artifact.n_text, artifact.n_vision, depth_text, depth_vision)
    generator = torch.Generator().manual_seed(int(seed))
    group = PromptGroup("boosting", "boosting", spec, geometry["text_width"], geometry["vision_width"],
                        learnable=learnable, std=FILL_STD, generator=generator)
    group.load_tensors(artifact.tensors, depth_fill="error" if method_depth is None else "keep")
    group.artifact_sha256 = artifact.content_sha256
    group.placement_sha256 = artifact.content_sha256
    if method_depth is not None:
        rule = f"{artifact.content_sha256}|method depth {depth_text}/{depth_vision}|seed {int(seed)}"
        group.placement_sha256 = hashlib.sha256(rule.encode()).hexdigest()
        changed = (depth_text, depth_vision) != (artifact.depth_text, artifact.depth_vision)
        (logger.info if changed else logger.debug)(
            "Boosting prompts trained at depth %d/%d placed at the method's depth %d/%d "
            "(deeper trained layers dropped, missing layers random N(0, %.2g), seed %d)",
            artifact.depth_text, artifact.depth_vision, depth_text, depth_vision, FILL_STD, int(seed),
        )
    return group


def run_seed() -> int:
    """The run's seed: what the global RNG was last seeded with (``torch.manual_seed``, Dassl's
    ``SEED``, ``caspl adapt --seed``)."""
    return int(torch.initial_seed())


def method_prompt_depth(model) -> Optional[Tuple[int, int]]:
    """``(text, vision)`` depth of a method's own deep prompts; None for methods without (CoOp, CoCoOp)."""
    spec = getattr(model, "prompt_spec", None)
    if isinstance(spec, PromptSpec):  # IVLP, PromptSRC
        return spec.depth_text, spec.depth_vision
    depth = getattr(model, "depth", None)
    if isinstance(depth, int) and hasattr(model, "compound_prompts_text"):  # MaPLe
        return depth, depth
    return None


def load_boosting_group(source: Union[str, os.PathLike, BoostingArtifact], clip: PromptedCLIP, *, learnable: bool = False) -> PromptGroup:
    """A boosting :class:`PromptGroup` for ``clip`` from an artifact (path or loaded), checked for fit."""
    artifact = source if isinstance(source, BoostingArtifact) else BoostingArtifact.load(source)
    return boosting_group_from_artifact(artifact, clip.geometry, learnable=learnable)


def cascade(
    method: Union[str, type],
    clip: PromptedCLIP,
    class_names: Sequence[str],
    boosting: BoostingSource,
    *,
    learnable_boosting: bool = False,
    boosting_depth: str = "artifact",
    boosting_seed: Optional[int] = None,
    **method_kwargs,
) -> PromptModel:
    """Build ``method`` on ``clip`` with the boosting prompts of ``boosting`` cascaded in front.

    ``boosting=None`` gives the method alone. ``learnable_boosting=True`` fine-tunes the boosting
    prompts too (the paper's ablation); by default they are frozen. ``boosting_depth="method"``
    applies the authors' depth rule (module docstring; ``boosting_seed`` seeds its random fill, None:
    the run's seed, :func:`run_seed`); it needs an artifact, not a ready :class:`PromptGroup`.
    """
    check_boosting_depth(boosting_depth)
    cls = get_method(method) if isinstance(method, str) else method
    group: Optional[PromptGroup] = None
    if isinstance(boosting, PromptGroup):
        if boosting_depth == "method":
            raise ValueError("boosting_depth='method' builds the boosting group from an artifact; pass the artifact or its path")
        group = boosting
    elif boosting is not None and boosting_depth == "method":
        artifact = boosting if isinstance(boosting, BoostingArtifact) else BoostingArtifact.load(boosting)
        model = cls(clip, class_names, **method_kwargs)
        group = boosting_group_from_artifact(artifact, clip.geometry, learnable=learnable_boosting,
                                             method_depth=method_prompt_depth(model),
                                             seed=run_seed() if boosting_seed is None else boosting_seed)
        model.attach_boosting(group, learnable=learnable_boosting)
        return model
    elif boosting is not None:
        group = load_boosting_group(boosting, clip, learnable=learnable_boosting)
    return cls(clip, class_names, boosting=group, learnable_boosting=learnable_boosting, **method_kwargs)
