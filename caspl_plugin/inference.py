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

from .artifacts.store import ArtifactError, load_artifact, save_artifact
from .methods.base import PromptModel
from .prediction import Prediction  # noqa: F401  (re-exported: caspl_plugin.inference.Prediction)
from .prompts import PromptedCLIP, PromptGroup, PromptSpec

logger = logging.getLogger(__name__)

FORMAT = "caspl-classifier"
FORMAT_VERSION = 1
_BOOSTING_PREFIX = "boosting::"
_GEOMETRY_KEYS = ("text_width", "text_depth", "vision_width", "vision_depth", "embed_dim")
_BOOSTING_KEYS = ("n_text", "n_vision", "depth_text", "depth_vision")
#: constructor arguments that come from the artifact's other fields, never from ``settings``
_NOT_SETTINGS = ("self", "clip", "class_names", "boosting")


def save_classifier(path, model: PromptModel, *, weights: Optional[str] = None, extra: Optional[dict] = None) -> str:
    """Write ``model`` (any :class:`PromptModel`, cascaded or not) as a classifier artifact; returns its hash."""
    from .version import __version__

    tensors = {f"model::{k}": v for k, v in model.learnable_state_dict().items() if not k.startswith("boosting.")}
    boosting = None
    if model.boosting is not None:
        group = model.boosting
        tensors.update({_BOOSTING_PREFIX + k: v for k, v in group.tensors().items()})
        boosting = {**group.spec.__dict__, "sha256": getattr(group, "artifact_sha256", None),
                    "learnable": group.learnable}
    recorded = weights if weights is not None else model.clip.weights_source
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": model.method,
        "settings": model.settings(),
        "student": {
            "backbone": model.clip.backbone_name,
            "weights": recorded,
            "weights_sha256": _recorded_digest(model.clip.backbone_name, recorded),
            **{k: model.clip.geometry[k] for k in _GEOMETRY_KEYS},
        },
        "boosting": boosting,
        "class_names": list(model.class_names),
        "num_classes": len(model.class_names),
        "library_version": __version__,
        **({"extra": extra} if extra else {}),
    }
    from .data.classnames import ClassNamesError, check_class_names

    try:  # never stored as is: a name with a control or bidirectional-override character
        check_class_names(model.class_names, f"{path}")
    except ClassNamesError as error:
        raise ArtifactError(str(error)) from None
    return save_artifact(path, tensors, metadata)


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
    """Check a classifier artifact's metadata against itself and its tensors, without building a
    CLIP; returns the method class. Raises :class:`ArtifactError` naming the first inconsistency."""
    from .methods import get_method

    def require(condition: bool, message: str) -> None:
        if not condition:
            raise ArtifactError(f"{path}: {message}")

    try:
        cls = get_method(meta.get("method"))
    except (KeyError, TypeError) as error:
        raise ArtifactError(f"{path}: {error.args[0] if error.args else error}") from None
    settings = meta.get("settings")
    require(isinstance(settings, dict), f"'settings' must be an object, got {type(settings).__name__}")
    accepted, required = _accepted_settings(cls)
    unknown = sorted(set(settings) - accepted)
    require(not unknown, f"unknown setting(s) {unknown} for method {meta['method']!r} (it accepts {sorted(accepted)})")
    missing = sorted(required - set(settings))
    require(not missing, f"setting(s) {missing} missing for method {meta['method']!r}")
    names = meta.get("class_names")
    require(isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names),
            "'class_names' must be a non-empty list of non-empty strings")
    require(len(set(names)) == len(names), "'class_names' has duplicates")
    from .names import class_name_problem

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
    for key in _GEOMETRY_KEYS:
        value = student.get(key)
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"student.{key} must be a positive integer, got {value!r}")
    boosting = meta.get("boosting")
    stored = {k[len(_BOOSTING_PREFIX):]: v for k, v in tensors.items() if k.startswith(_BOOSTING_PREFIX)}
    if boosting:
        require(isinstance(boosting, dict), "'boosting' must be an object or null")
        for key in _BOOSTING_KEYS:
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
    return cls


def _recorded_digest(backbone: str, recorded: Optional[str]) -> Optional[str]:
    """The digest :func:`save_classifier` records for the weights source string ``recorded``."""
    from .clip.weights import weights_digest

    source = _parse_source(backbone, recorded)
    return None if source is None else weights_digest(source)


def _parse_source(backbone: str, recorded: Optional[str]):
    """The :class:`WeightsSource` a recorded ``kind:location`` string names (None: random/unknown)."""
    from .clip.weights import RANDOM, WeightsSource, resolve_weights

    if not recorded or recorded == RANDOM:
        return None
    kind, _, location = recorded.partition(":")
    if kind == "package":
        return WeightsSource("package", location)
    if kind == "file":
        return WeightsSource("file", location, path=location)
    if kind == "tag":
        return resolve_weights(backbone, location)
    return WeightsSource("file", recorded, path=recorded)  # an explicit path given at save time


def verified_recorded_weights(path, student: Mapping[str, Any]) -> Optional[str]:
    """The ``create_clip`` weights argument for a classifier's recorded weights, after checking the
    recorded digest; raises :class:`ArtifactError` (saying what to pass instead) when it cannot."""
    from .clip.weights import RANDOM, WeightsNotFoundError, file_sha256, package_weights_file

    recorded, digest = student.get("weights"), student.get("weights_sha256")
    if not recorded or recorded == RANDOM:
        return RANDOM if recorded == RANDOM else None
    hint = "pass the student weights explicitly (weights=... / caspl classify --weights FILE) to use them anyway"
    try:
        source = _parse_source(student["backbone"], recorded)
    except (WeightsNotFoundError, ValueError) as error:
        raise ArtifactError(f"{path}: the recorded student weights {recorded} are not available ({error}); {hint}") from None
    if source.kind == "package":
        file = package_weights_file(source.location)
        if file is None or (digest is not None and file_sha256(file) == digest):
            return None  # the package's own default weights for this model
        found = file_sha256(file) if file.is_file() else "no file"
        what = "records no digest for them" if digest is None else f"recorded sha256 {digest}, found {found}"
        raise ArtifactError(
            f"{path}: the package weights of {source.location} cannot be verified against the ones it was saved "
            f"with ({what}); {hint}"
        )
    file = source.path
    if digest is None:
        raise ArtifactError(
            f"{path} names its student weights {file} but records no digest for them (written by an older "
            f"version), so the file cannot be verified; {hint}"
        )
    try:
        found = file_sha256(file)
    except OSError as error:
        raise ArtifactError(f"{path}: the recorded student weights {file} cannot be read ({error}); {hint}") from None
    if found != digest:
        raise ArtifactError(
            f"{path}: the recorded student weights {file} do not match the digest recorded in the artifact "
            f"(recorded sha256 {digest}, file {found}): the file was changed or replaced; {hint}"
        )
    return file


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
