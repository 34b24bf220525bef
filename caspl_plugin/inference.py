"""Phase-2 results as self-contained classifier artifacts, and loading them back for inference.

A classifier artifact (``format: caspl-classifier``) holds the method's learned tensors and the
frozen boosting prompts (if any) in safetensors, and in its metadata everything needed to rebuild
the model: method name and settings, student backbone (name, weights source, geometry), the
boosting artifact's hash, and the class names. The CLIP weights themselves are not copied.

    model = save_classifier("pets.safetensors", trained_model)       # after phase 2
    clf = Classifier.load("pets.safetensors")                         # later, anywhere
    clf.predict(["cat.jpg"], topk=3)
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from .artifacts.store import ArtifactError, load_artifact, save_artifact
from .methods.base import PromptModel
from .prediction import Prediction  # noqa: F401  (re-exported: caspl_plugin.inference.Prediction)
from .prompts import PromptedCLIP, PromptGroup, PromptSpec

logger = logging.getLogger(__name__)

FORMAT = "caspl-classifier"
FORMAT_VERSION = 1
_BOOSTING_PREFIX = "boosting::"
_GEOMETRY_KEYS = ("text_width", "text_depth", "vision_width", "vision_depth", "embed_dim")


def save_classifier(path, model: PromptModel, *, weights: Optional[str] = None, extra: Optional[dict] = None) -> str:
    """Write ``model`` (any :class:`PromptModel`, cascaded or not) as a classifier artifact; returns its hash."""
    from . import __version__

    tensors = {f"model::{k}": v for k, v in model.learnable_state_dict().items() if not k.startswith("boosting.")}
    boosting = None
    if model.boosting is not None:
        group = model.boosting
        tensors.update({_BOOSTING_PREFIX + k: v for k, v in group.tensors().items()})
        boosting = {**group.spec.__dict__, "sha256": getattr(group, "artifact_sha256", None),
                    "learnable": group.learnable}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": model.method,
        "settings": model.settings(),
        "student": {
            "backbone": model.clip.backbone_name,
            "weights": weights if weights is not None else model.clip.weights_source,
            **{k: model.clip.geometry[k] for k in _GEOMETRY_KEYS},
        },
        "boosting": boosting,
        "class_names": list(model.class_names),
        "library_version": __version__,
        **({"extra": extra} if extra else {}),
    }
    return save_artifact(path, tensors, metadata)


def load_classifier(path, *, weights: Optional[str] = None, weights_dir: Optional[str] = None, device=None) -> PromptModel:
    """Rebuild the classifier saved at ``path`` (eval mode), on a CLIP loaded like the original.

    ``weights`` overrides the recorded weights source of the student CLIP.
    """
    from .clip import create_clip
    from .methods import get_method

    tensors, meta = load_artifact(path, expected_format=FORMAT, supported_versions=(FORMAT_VERSION,))
    try:
        cls = get_method(meta["method"])
    except KeyError as error:
        raise ArtifactError(f"{path}: {error.args[0]}") from None
    student = meta["student"]
    recorded = student.get("weights")
    source = weights if weights is not None else (recorded if recorded and not recorded.startswith(("random", "package")) else None)
    backbone = create_clip(student["backbone"], _weights_arg(source), weights_dir=weights_dir, device=device)
    clip = PromptedCLIP(backbone)
    differences = [f"{k}: artifact {student[k]} vs {backbone.name} {clip.geometry[k]}" for k in _GEOMETRY_KEYS if student[k] != clip.geometry[k]]
    if differences:
        raise ArtifactError(f"{path} does not fit {backbone.name}: " + "; ".join(differences))
    group = None
    if meta.get("boosting"):
        b = meta["boosting"]
        spec = PromptSpec(b["n_text"], b["n_vision"], b["depth_text"], b["depth_vision"])
        group = PromptGroup("boosting", "boosting", spec, clip.text_width, clip.vision_width, learnable=False)
        group.load_tensors({k[len(_BOOSTING_PREFIX):]: v for k, v in tensors.items() if k.startswith(_BOOSTING_PREFIX)})
        group.artifact_sha256 = b.get("sha256")
    model = cls(clip, meta["class_names"], boosting=group, **meta["settings"])
    state = {k[len("model::"):]: v for k, v in tensors.items() if k.startswith("model::")}
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


def _weights_arg(source: Optional[str]) -> Optional[str]:
    """The recorded ``WeightsSource`` string (``kind:location``) as a ``create_clip`` argument."""
    if source and ":" in source and source.split(":", 1)[0] in ("file", "tag"):
        return source.split(":", 1)[1]
    return source


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
        from .export.preprocess import open_image

        images = []
        for path in paths:
            try:
                images.append(self.transform(open_image(path)))
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
