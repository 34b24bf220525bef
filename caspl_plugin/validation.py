"""Per-kind validation of an artifact that has already been read: what ``caspl inspect`` checks. It
sits above the kinds it knows (artifacts, the classifier's loader, the toy CLIPs), so none of them
imports it.

:func:`validate_artifact` runs, for the artifact's ``format``, the same checks its loader runs
(boosting prompts: tensors against the metadata and the class-name hash; classifiers: method,
settings, class names, geometry, boosting tensors and the recorded weights' digest; distillation
checkpoints: prompts, counts and class names; the toy CLIPs: the package's pinned hash) and returns
every problem found as a line of text.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from .artifacts.store import ArtifactError

__all__ = ["validate_artifact"]


def _boosting(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> list[str]:
    from .artifacts.boosting import BoostingArtifact

    BoostingArtifact(dict(tensors), dict(metadata), path=path).validate()
    return []


def _classifier(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> list[str]:
    from .clip.recorded import verified_recorded_weights
    from .inference import check_classifier

    check_classifier(path, tensors, metadata)
    try:
        verified_recorded_weights(path, metadata["student"])
    except ArtifactError as error:
        return [f"student weights: {error}"]
    return []


def _distill_checkpoint(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> list[str]:
    problems = []
    names = metadata.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        problems.append("'class_names' must be a non-empty list of strings")
    if not isinstance(metadata.get("settings"), dict):
        problems.append("'settings' must be an object")
    next_epoch, losses = metadata.get("next_epoch"), metadata.get("epoch_losses")
    if not isinstance(next_epoch, int) or isinstance(next_epoch, bool) or next_epoch < 0:
        problems.append(f"next_epoch must be a non-negative integer, got {next_epoch!r}")
    elif not isinstance(losses, list) or len(losses) != next_epoch:
        problems.append(f"epoch_losses has {len(losses) if isinstance(losses, list) else losses!r} entries, "
                        f"next_epoch is {next_epoch}")
    if not any(name.startswith("prompt.") for name in tensors):
        problems.append("no prompt tensors ('prompt.text' / 'prompt.vision')")
    return problems


def _toy_clip(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> list[str]:
    from .toy.weights import TOY_MODELS, read_weights_manifest

    name = metadata.get("model")
    if name not in TOY_MODELS:
        return [f"model {name!r} is not a toy model ({', '.join(TOY_MODELS)})"]
    pinned = read_weights_manifest().get("models", {}).get(name, {}).get("content_sha256")
    if metadata.get("content_sha256") != pinned:
        return [f"content hash differs from the one the package pins for {name!r} ({pinned})"]
    return []


_VALIDATORS: dict[str, Callable[[str, Mapping, Mapping], list[str]]] = {
    "caspl-boosting": _boosting,
    "caspl-classifier": _classifier,
    "caspl-distill-checkpoint": _distill_checkpoint,
    "caspl-toy-clip": _toy_clip,
}


def validate_artifact(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> list[str]:
    """Every inconsistency of the artifact, one line each (empty: none); unknown kinds are reported."""
    validator = _VALIDATORS.get(metadata.get("format"))
    if validator is None:
        return [f"unknown artifact kind {metadata.get('format')!r} (known: {', '.join(sorted(_VALIDATORS))})"]
    try:
        return validator(path, tensors, metadata)
    except ArtifactError as error:
        return [str(error)]
    except (KeyError, TypeError, AttributeError, ValueError) as error:  # an edited header of the wrong shape
        return [f"{path}: malformed metadata ({type(error).__name__}: {error})"]
