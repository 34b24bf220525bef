"""Phase-2 results as self-contained classifier artifacts, and loading them back for inference.

A classifier artifact (``format: caspl-classifier``) holds the method's learned tensors and the
frozen boosting prompts (if any) in safetensors, and in its metadata everything needed to rebuild
the model: method name and settings, student backbone (name, weights source, geometry), the
boosting artifact's hash, and the class names. The CLIP weights themselves are not copied; their
digest is (``student.weights_sha256``: the sha256 of the weights file, of a tag's cached download or
of a package model's shipped file; ``null`` for random weights). A path recorded in an artifact is
never trusted: :func:`load_classifier` reads the recorded weights only when the file still has the
recorded digest, and otherwise asks for the weights explicitly (``weights=`` / ``--weights``).

    model = save_classifier("pets.safetensors", trained_model)       # after phase 2
    clf = Classifier.load("pets.safetensors")                         # later, anywhere
    clf.predict(["cat.jpg"], topk=3)
"""
from __future__ import annotations

import inspect
import logging
from typing import Any, Mapping, Optional, Sequence

import torch

from .artifacts.classifier import (
    FORMAT, FORMAT_VERSION, GEOMETRY_KEYS, boosting_tensors, check_classifier_format, learned_tensors, write_classifier,
)
from .artifacts.store import ArtifactError, load_artifact
from .clip.recorded import recorded_digest, verified_recorded_weights
from .methods.base import PromptModel
from .prediction import Prediction  # noqa: F401  (re-exported: caspl_plugin.inference.Prediction)
from .prompts import PromptedCLIP, PromptGroup, PromptSpec

logger = logging.getLogger(__name__)

#: constructor arguments that come from the artifact's other fields, never from ``settings``
_NOT_SETTINGS = ("self", "clip", "class_names", "boosting")


def save_classifier(path, model: PromptModel, *, weights: Optional[str] = None, extra: Optional[dict] = None) -> str:
    """Write ``model`` (any :class:`PromptModel`, cascaded or not) as a classifier artifact
    (:mod:`caspl_plugin.artifacts.classifier`); returns its hash."""
    recorded = weights if weights is not None else model.clip.weights_source
    boosting, boosting_values = None, None
    if model.boosting is not None:
        group = model.boosting
        boosting_values = group.tensors()
        boosting = {**group.spec.__dict__, "sha256": getattr(group, "artifact_sha256", None), "learnable": group.learnable}
    student = {
        "backbone": model.clip.backbone_name,
        "weights": recorded,
        "weights_sha256": recorded_digest(model.clip.backbone_name, recorded),
        **{k: model.clip.geometry[k] for k in GEOMETRY_KEYS},
    }
    learned = {k: v for k, v in model.learnable_state_dict().items() if not k.startswith("boosting.")}
    return write_classifier(path, method=model.method, settings=model.settings(), class_names=model.class_names,
                            learned=learned, student=student, boosting=boosting, boosting_tensors=boosting_values,
                            extra=extra)


def load_classifier(path, *, weights: Optional[str] = None, weights_dir: Optional[str] = None, device=None) -> PromptModel:
    """Rebuild the classifier saved at ``path`` (eval mode), on a CLIP loaded like the original.

    ``weights`` overrides the recorded weights source of the student CLIP (and is used as given);
    without it the recorded weights are used only if their digest matches the one recorded.
    """
    from .clip import create_clip

    tensors, meta = load_artifact(path, expected_format=FORMAT, supported_versions=(FORMAT_VERSION,))
    cls = check_classifier(path, tensors, meta)
    student = meta["student"]
    if weights is not None:
        source = weights
        logger.info("%s: student weights %s given explicitly (the recorded digest is not checked)", path, weights)
    else:
        source = verified_recorded_weights(path, student)
    backbone = create_clip(student["backbone"], source, weights_dir=weights_dir, device=device)
    clip = PromptedCLIP(backbone)
    differences = [f"{k}: artifact {student[k]} vs {backbone.name} {clip.geometry[k]}" for k in GEOMETRY_KEYS if student[k] != clip.geometry[k]]
    if differences:
        raise ArtifactError(f"{path} does not fit {backbone.name}: " + "; ".join(differences))
    group = None
    if meta.get("boosting"):
        b = meta["boosting"]
        spec = PromptSpec(b["n_text"], b["n_vision"], b["depth_text"], b["depth_vision"])
        group = PromptGroup("boosting", "boosting", spec, clip.text_width, clip.vision_width, learnable=False)
        group.load_tensors(boosting_tensors(tensors))
        group.artifact_sha256 = b.get("sha256")
    model = cls(clip, meta["class_names"], boosting=group, **meta["settings"])
    state = learned_tensors(tensors)
    expected = {k: v.shape for k, v in model.learnable_state_dict().items() if not k.startswith("boosting.")}
    found = {k: v.shape for k, v in state.items()}
    if found != expected:
        differing = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
        raise ArtifactError(
            f"{path}: tensors {differing} do not match method {meta['method']!r} with settings {meta['settings']} "
            f"(artifact {[tuple(found[k]) if k in found else None for k in differing]}, "
            f"model {[tuple(expected[k]) if k in expected else None for k in differing]})"
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)
    return model.to(clip.device).eval()


def _accepted_settings(cls: type) -> tuple[set[str], set[str]]:
    """(accepted, required) keyword arguments of a method's constructor chain (``**kwargs`` followed)."""
    accepted: set[str] = set()
    required: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters.values()
        for parameter in parameters:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name in _NOT_SETTINGS:
                continue
            accepted.add(parameter.name)
            if parameter.default is parameter.empty:
                required.add(parameter.name)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(vars(klass)["__init__"]).parameters.values()):
            break
    return accepted, required


def check_classifier(path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> type:
    """Check a classifier artifact without building a CLIP: its format
    (:func:`~caspl_plugin.artifacts.classifier.check_classifier_format`), then its method and the
    settings that method's constructor accepts; returns the method class. Raises
    :class:`ArtifactError` naming the first inconsistency."""
    from .methods import get_method

    check_classifier_format(path, tensors, meta)
    try:
        cls = get_method(meta["method"])
    except KeyError as error:
        raise ArtifactError(f"{path}: {error.args[0] if error.args else error}") from None
    settings = meta["settings"]
    accepted, required = _accepted_settings(cls)
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise ArtifactError(f"{path}: unknown setting(s) {unknown} for method {meta['method']!r} (it accepts {sorted(accepted)})")
    missing = sorted(required - set(settings))
    if missing:
        raise ArtifactError(f"{path}: setting(s) {missing} missing for method {meta['method']!r}")
    return cls


def with_class_names(model: PromptModel, class_names: Sequence[str], template: Optional[str] = None) -> PromptModel:
    """A copy of ``model`` over other class names (open vocabulary: the prompts were learned once, any
    names can be ranked), optionally with another class template; the frozen CLIP is shared, not
    copied. A method whose prompts belong to its training classes (CoOp's class-specific context)
    refuses with its reason."""
    import copy

    renamed = copy.deepcopy(model, memo={id(model.clip): model.clip})
    if template is not None:
        renamed.template = template
        renamed.prompts_changed()
    renamed.set_class_names(class_names)
    renamed.text_inputs()  # tokenize now: a bad template or a name that does not fit fails here
    return renamed.eval()


class Classifier:
    """A loaded classifier with its preprocessing: ``predict(paths or tensor, topk)``."""

    def __init__(self, model: PromptModel):
        from .data.unlabeled import eval_transform

        self.model = model.eval()
        geometry = model.clip.geometry
        self.transform = eval_transform(geometry["image_size"], model.clip.mean, model.clip.std)

    @classmethod
    def load(cls, path, **kwargs) -> "Classifier":
        return cls(load_classifier(path, **kwargs))

    def with_class_names(self, class_names: Sequence[str], template: Optional[str] = None) -> "Classifier":
        """This classifier ranking ``class_names`` instead (see :func:`with_class_names`)."""
        return Classifier(with_class_names(self.model, class_names, template))

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def description(self) -> str:
        """One line: method, student, classes, boosting."""
        model = self.model
        return (f"{model.method} on {model.clip.backbone_name}, {len(model.class_names)} classes"
                + (", with boosting prompts" if model.boosting is not None else ""))

    def load_images(self, paths: Sequence[str]) -> torch.Tensor:
        """``[N, 3, S, S]`` eval-transformed images; a clear error naming an unreadable one."""
        from .data.images import open_rgb

        images = []
        for path in paths:
            try:
                images.append(self.transform(open_rgb(path)))
            except FileNotFoundError:
                raise FileNotFoundError(f"Image not found: {path}") from None
            except Exception as error:
                raise ValueError(f"Cannot read image {path}: {error}") from None
        return torch.stack(images)

    @torch.no_grad()
    def predict(self, images, topk: int = 5, names: Optional[Sequence[str]] = None) -> list[Prediction]:
        if not isinstance(images, torch.Tensor):
            names = [str(p) for p in images]
            images = self.load_images(names)
        names = names or [f"image {i}" for i in range(len(images))]
        probs = self.model(images.to(self.model.clip.device)).float().softmax(-1)
        k = min(topk, probs.shape[-1])
        values, indices = probs.topk(k, dim=-1)
        classes = self.model.class_names
        return [
            Prediction(name, [classes[i] for i in idx.tolist()], val.tolist())
            for name, idx, val in zip(names, indices, values)
        ]
