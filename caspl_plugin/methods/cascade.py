"""The CasPL cascade: any method plus frozen boosting prompts from a phase-1 artifact.

The boosting group is loaded, checked against the student it is placed into, frozen (unless the
ablation flag makes it learnable) and placed by the prompt mechanism in CasPL's order next to the
method's own prompts; the method's losses are untouched.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from ..artifacts.boosting import BoostingArtifact
from ..prompts import PromptedCLIP, PromptGroup, PromptSpec
from .base import PromptModel
from .registry import get_method

BoostingSource = Union[str, os.PathLike, BoostingArtifact, PromptGroup, None]


def boosting_group_from_artifact(artifact: BoostingArtifact, geometry: dict, *, learnable: bool = False) -> PromptGroup:
    """The artifact's boosting :class:`PromptGroup` for a CLIP of ``geometry`` (checked for fit).

    ``geometry`` has the keys of ``Backbone.describe()`` (widths, depths, backbone name).
    """
    artifact.check_compatible(geometry)
    spec = PromptSpec(artifact.n_text, artifact.n_vision, max(artifact.depth_text, 1), max(artifact.depth_vision, 1))
    group = PromptGroup("boosting", "boosting", spec, geometry["text_width"], geometry["vision_width"], learnable=learnable)
    group.load_tensors(artifact.tensors)
    group.artifact_sha256 = artifact.content_sha256
    return group


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
    **method_kwargs,
) -> PromptModel:
    """Build ``method`` on ``clip`` with the boosting prompts of ``boosting`` cascaded in front.

    ``boosting=None`` gives the method alone. ``learnable_boosting=True`` fine-tunes the boosting
    prompts too (the paper's ablation); by default they are frozen.
    """
    cls = get_method(method) if isinstance(method, str) else method
    group: Optional[PromptGroup] = None
    if isinstance(boosting, PromptGroup):
        group = boosting
    elif boosting is not None:
        group = load_boosting_group(boosting, clip, learnable=learnable_boosting)
    return cls(clip, class_names, boosting=group, learnable_boosting=learnable_boosting, **method_kwargs)
