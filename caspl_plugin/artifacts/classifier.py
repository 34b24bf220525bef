"""The classifier file format (``format: caspl-classifier``): a phase-2 model as safetensors tensors
with JSON metadata, beside the boosting format (:mod:`.boosting`).

Tensors: ``model::<parameter>`` (the method's learned tensors) and ``boosting::text`` /
``boosting::vision`` (the frozen boosting prompts, if any). Metadata: method name and settings,
student backbone (name, weights source and digest, geometry), the boosting record, the class names.
:func:`write_classifier` writes one, :func:`check_classifier_format` checks what a reader can check
without the method's class or a CLIP (the loader that builds the model checks the rest:
:func:`caspl_plugin.inference.load_classifier`).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from ..names import class_name_problem
from ..version import __version__
from .store import ArtifactError, save_artifact

FORMAT = "caspl-classifier"
FORMAT_VERSION = 1
MODEL_PREFIX = "model::"
BOOSTING_PREFIX = "boosting::"
GEOMETRY_KEYS = ("text_width", "text_depth", "vision_width", "vision_depth", "embed_dim")
BOOSTING_KEYS = ("n_text", "n_vision", "depth_text", "depth_vision")


def write_classifier(
    path,
    *,
    method: str,
    settings: dict,
    class_names,
    learned: Mapping[str, torch.Tensor],
    student: dict,
    boosting: Optional[dict] = None,
    boosting_tensors: Optional[Mapping[str, torch.Tensor]] = None,
    extra: Optional[dict] = None,
) -> str:
    """Write a classifier artifact; returns its content hash. ``student`` holds ``backbone``,
    ``weights``, ``weights_sha256`` and the :data:`GEOMETRY_KEYS`; ``boosting`` the group's spec,
    artifact hash and learnable flag (None without boosting prompts)."""
    for i, name in enumerate(class_names):  # never stored as is: e.g. a control or bidirectional-override character
        reason = class_name_problem(name)
        if reason:
            raise ArtifactError(f"{path}: class name {i}: {reason}")
    tensors = {MODEL_PREFIX + k: v for k, v in learned.items()}
    tensors.update({BOOSTING_PREFIX + k: v for k, v in (boosting_tensors or {}).items()})
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "settings": settings,
        "student": student,
        "boosting": boosting,
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "library_version": __version__,
        **({"extra": extra} if extra else {}),
    }
    return save_artifact(path, tensors, metadata)


def learned_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The method's learned tensors by parameter name."""
    return {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def boosting_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The boosting prompts by encoder (``text``, ``vision``)."""
    return {k[len(BOOSTING_PREFIX):]: v for k, v in tensors.items() if k.startswith(BOOSTING_PREFIX)}


def check_classifier_format(path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Check a classifier artifact's metadata against itself and its tensors (what any reader can
    check without the method's class or a CLIP). Raises :class:`ArtifactError` naming the first
    inconsistency."""

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ArtifactError(f"{path}: {message}")

    settings = meta.get("settings")
    require(isinstance(settings, dict), f"'settings' must be an object, got {type(settings).__name__}")
    require(isinstance(meta.get("method"), str), "'method' must be a method name")
    names = meta.get("class_names")
    require(isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names),
            "'class_names' must be a non-empty list of non-empty strings")
    require(len(set(names)) == len(names), "'class_names' has duplicates")
    for i, name in enumerate(names):
        reason = class_name_problem(name)
        require(reason is None, f"class_names[{i}]: {reason}")
    if "num_classes" in meta:
        require(meta["num_classes"] == len(names),
                f"num_classes is {meta['num_classes']!r} but there are {len(names)} class names")
    student = meta.get("student")
    require(isinstance(student, dict), "'student' must be an object")
    require(isinstance(student.get("backbone"), str), "student.backbone must be a model name")
    require(student.get("weights") is None or isinstance(student.get("weights"), str), "student.weights must be a string")
    digest = student.get("weights_sha256")
    require(digest is None or (isinstance(digest, str) and len(digest) == 64), "student.weights_sha256 is not a sha256")
    for key in GEOMETRY_KEYS:
        value = student.get(key)
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"student.{key} must be a positive integer, got {value!r}")
    boosting = meta.get("boosting")
    stored = {k[len(BOOSTING_PREFIX):]: v for k, v in tensors.items() if k.startswith(BOOSTING_PREFIX)}
    if boosting:
        require(isinstance(boosting, dict), "'boosting' must be an object or null")
        for key in BOOSTING_KEYS:
            value = boosting.get(key)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                    f"boosting.{key} must be a non-negative integer, got {value!r}")
        for encoder, width in (("text", student["text_width"]), ("vision", student["vision_width"])):
            n, depth = boosting[f"n_{encoder}"], boosting[f"depth_{encoder}"]
            tensor = stored.get(encoder)
            shape = list(tensor.shape) if tensor is not None else None
            expected = [depth, n, width] if n and depth else None
            require(shape == expected,
                    f"boosting {encoder} tensor {shape}, metadata says {expected} "
                    f"(boosting.depth_{encoder}, boosting.n_{encoder}, student.{encoder}_width)")
        extra = sorted(set(stored) - {"text", "vision"})
        require(not extra, f"unexpected boosting tensors {extra}")
    else:
        require(not stored, f"boosting tensors {sorted(stored)} but no 'boosting' metadata")
