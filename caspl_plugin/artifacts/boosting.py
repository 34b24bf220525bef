"""The boosting-prompt artifact: phase 1's output, phase 2's frozen input.

Tensors (fp32), one per encoder that has prompts:

- ``"text"``:   ``[depth_text, n_text, text_width]``
- ``"vision"``: ``[depth_vision, n_vision, vision_width]``

Row 0 holds the layer-0 tokens, row ``i`` the deep tokens that replace the group's slice at the
input of block ``i``. The metadata records the student geometry the prompts were learned for, the
teacher, template, class names (and their hash), dataset, training settings and library version;
:meth:`BoostingArtifact.check_compatible` says exactly what differs from a given student.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch

from ..names import class_name_problem
from .store import HASH_SCOPE, HASH_SCOPE_KEY, ArtifactError, load_artifact, save_artifact

__all__ = ["ArtifactMismatchError", "BoostingArtifact", "FORMAT", "FORMAT_VERSION", "class_names_sha256"]

logger = logging.getLogger(__name__)

FORMAT = "caspl-boosting"
FORMAT_VERSION = 1
ENCODERS = ("text", "vision")
_STUDENT_FIELDS = ("backbone", "arch", "text_width", "text_depth", "vision_width", "vision_depth")


class ArtifactMismatchError(ArtifactError):
    """The artifact's prompts do not fit the student they are meant for."""


def _check_names(names, where: str) -> None:
    """Class names must be strings without control or bidirectional-override characters."""
    if not isinstance(names, list):
        raise ArtifactError(f"{where} must be a list of strings, got {type(names).__name__}")
    for i, name in enumerate(names):
        reason = class_name_problem(name)
        if reason:
            raise ArtifactError(f"{where}[{i}]: {reason}")


def class_names_sha256(class_names: Sequence[str]) -> str:
    """sha256 of the class names joined by newlines (order matters)."""
    return hashlib.sha256("\n".join(class_names).encode("utf-8")).hexdigest()


def _geometry(student: Any) -> dict:
    """``Backbone.describe()`` output from a Backbone or an already described mapping."""
    geometry = student.describe() if hasattr(student, "describe") else student
    missing = [key for key in _STUDENT_FIELDS if key not in geometry]
    if missing:
        raise ValueError(f"student geometry lacks {', '.join(missing)}; expected Backbone.describe() output")
    return dict(geometry)


@dataclass
class BoostingArtifact:
    """Boosting prompts (``tensors["text"]``, ``tensors["vision"]``) with their metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    path: Optional[str] = field(default=None, compare=False)

    @classmethod
    def from_group_tensors(
        cls,
        text: Optional[torch.Tensor],
        vision: Optional[torch.Tensor],
        *,
        student: Any,
        teacher: Optional[str] = None,
        teacher_weights: Optional[str] = None,
        template: Optional[str] = None,
        class_names: Optional[Sequence[str]] = None,
        dataset: Optional[str] = None,
        training: Optional[Mapping[str, Any]] = None,
        source: Optional[Mapping[str, Any]] = None,
        domains: Optional[Sequence[Mapping[str, Any]]] = None,
    ) -> "BoostingArtifact":
        """Build an artifact from a prompt group's per-encoder ``[depth, n, width]`` tensors.

        ``student`` is the Backbone the prompts were learned on, or its ``describe()`` output. An
        encoder without prompts gets ``None`` (or a tensor with 0 tokens). ``domains`` (universal
        boosting prompts from several domains): one record per domain with ``name``, ``num_classes``,
        ``class_names_sha256``, ``template``, ``num_images`` (and optionally ``class_names``).
        """
        from caspl_plugin.version import __version__

        geometry = _geometry(student)
        tensors = {}
        for name, tensor in (("text", text), ("vision", vision)):
            if tensor is None:
                continue
            if tensor.ndim != 3:
                raise ValueError(f"{name} prompts must be [depth, n_tokens, width], got shape {list(tensor.shape)}")
            if tensor.shape[1] > 0:
                tensors[name] = tensor.detach().to("cpu", torch.float32).contiguous()
        counts = {name: tuple(tensors[name].shape[:2]) if name in tensors else (0, 0) for name in ENCODERS}
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "student": {key: geometry[key] for key in _STUDENT_FIELDS},
            "prompts": {
                "n_text": counts["text"][1],
                "n_vision": counts["vision"][1],
                "depth_text": counts["text"][0],
                "depth_vision": counts["vision"][0],
            },
            "teacher": {"name": teacher, "weights": teacher_weights},
            "template": template,
            "class_names": list(class_names) if class_names is not None else None,
            "class_names_sha256": class_names_sha256(class_names) if class_names is not None else None,
            "num_classes": len(class_names) if class_names is not None else None,
            "dataset": dataset,
            "training": dict(training or {}),
            "library_version": __version__,
        }
        if source is not None:
            metadata["source"] = dict(source)
        if domains:
            metadata["domains"] = [dict(d) for d in domains]
        artifact = cls(tensors, metadata)
        artifact.validate()
        return artifact

    # -- accessors ---------------------------------------------------------------------------------

    @property
    def text(self) -> Optional[torch.Tensor]:
        return self.tensors.get("text")

    @property
    def vision(self) -> Optional[torch.Tensor]:
        return self.tensors.get("vision")

    @property
    def n_text(self) -> int:
        return self.metadata["prompts"]["n_text"]

    @property
    def n_vision(self) -> int:
        return self.metadata["prompts"]["n_vision"]

    @property
    def depth_text(self) -> int:
        return self.metadata["prompts"]["depth_text"]

    @property
    def depth_vision(self) -> int:
        return self.metadata["prompts"]["depth_vision"]

    @property
    def class_names(self) -> Optional[list[str]]:
        return self.metadata.get("class_names")

    @property
    def domains(self) -> Optional[list[dict]]:
        """The domains of a multi-domain (universal) artifact, None for a per-domain one."""
        return self.metadata.get("domains")

    @property
    def content_sha256(self) -> Optional[str]:
        return self.metadata.get("content_sha256")

    # -- persistence -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> str:
        """Write the artifact atomically; returns (and records) its content hash."""
        self.validate()
        self.metadata["content_sha256"] = save_artifact(path, self.tensors, self.metadata)
        self.metadata[HASH_SCOPE_KEY] = HASH_SCOPE
        self.path = os.fspath(path)
        return self.metadata["content_sha256"]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BoostingArtifact":
        """Read and verify an artifact (hash, format version, tensor shapes against the metadata)."""
        tensors, metadata = load_artifact(path, expected_format=FORMAT, supported_versions=(FORMAT_VERSION,))
        artifact = cls(tensors, metadata, path=os.fspath(path))
        artifact.validate()
        return artifact

    # -- checks ------------------------------------------------------------------------------------

    @property
    def _origin(self) -> str:
        return self.path or "boosting artifact"

    def validate(self) -> None:
        """Check that the tensors agree with the metadata; raises :class:`ArtifactError`."""
        meta, origin = self.metadata, self._origin
        for key in ("student", "prompts", "teacher", "training"):
            if not isinstance(meta.get(key), dict):
                raise ArtifactError(f"{origin}: metadata field {key!r} missing or not an object")
        missing = [f"student.{key}" for key in _STUDENT_FIELDS if key not in meta["student"]]
        missing += [f"prompts.{p}_{e}" for p in ("n", "depth") for e in ENCODERS if p + "_" + e not in meta["prompts"]]
        if missing:
            raise ArtifactError(f"{origin}: metadata lacks {', '.join(missing)}")
        unknown = sorted(set(self.tensors) - set(ENCODERS))
        if unknown:
            raise ArtifactError(f"{origin}: unexpected tensors {unknown}; expected only 'text' and/or 'vision'")
        for name in ENCODERS:
            n, depth = meta["prompts"][f"n_{name}"], meta["prompts"][f"depth_{name}"]
            tensor = self.tensors.get(name)
            if tensor is None:
                if n != 0:
                    raise ArtifactError(f"{origin}: metadata says {n} {name} tokens but there is no {name!r} tensor")
                continue
            expected = (depth, n, meta["student"][f"{name}_width"])
            if tuple(tensor.shape) != expected or n < 1 or depth < 1:
                raise ArtifactError(
                    f"{origin}: {name!r} tensor has shape {list(tensor.shape)}, metadata says "
                    f"[depth_{name}, n_{name}, {name}_width] = {list(expected)}"
                )
            if tensor.dtype != torch.float32:
                raise ArtifactError(f"{origin}: {name!r} tensor is {tensor.dtype}, expected torch.float32")
        names = meta.get("class_names")
        if names is not None:
            if meta.get("num_classes") != len(names) or meta.get("class_names_sha256") != class_names_sha256(names):
                raise ArtifactError(f"{origin}: class_names do not match num_classes / class_names_sha256")
            _check_names(names, f"{origin}: class_names")
        if "domains" in meta:
            _validate_domains(meta["domains"], origin)

    def check_compatible(self, student_geometry: Any) -> None:
        """Raise :class:`ArtifactMismatchError` listing every field that does not fit ``student_geometry``.

        ``student_geometry`` is ``Backbone.describe()`` output (or the Backbone). Widths must be equal
        and prompt depths must not exceed the student's encoder depths, for each encoder that has
        prompts; a different backbone name alone is only logged as a warning.
        """
        student = _geometry(student_geometry)
        ours = self.metadata["student"]
        differences = []
        for name in ENCODERS:
            if name not in self.tensors:
                continue
            width_key, depth_key = f"{name}_width", f"{name}_depth"
            if ours[width_key] != student[width_key]:
                differences.append(f"{width_key}: artifact {ours[width_key]} vs student {student[width_key]}")
            depth = self.metadata["prompts"][f"depth_{name}"]
            if depth > student[depth_key]:
                differences.append(
                    f"depth_{name}: artifact {depth} vs student {depth_key} {student[depth_key]} "
                    "(prompt depth cannot exceed the encoder depth)"
                )
        if differences:
            raise ArtifactMismatchError(
                f"{self._origin} (learned on {ours['backbone']}) does not fit student {student['backbone']}: "
                + "; ".join(differences)
            )
        if ours["backbone"] != student["backbone"]:
            logger.warning(
                "%s was learned on %s, loading it into %s (widths and depths fit)",
                self._origin, ours["backbone"], student["backbone"],
            )


_DOMAIN_FIELDS = {"name": str, "num_classes": int, "class_names_sha256": str, "template": str, "num_images": int}


def _validate_domains(domains: Any, origin: str) -> None:
    """The ``domains`` list of a multi-domain artifact: one record per domain, unique names."""
    if not isinstance(domains, list) or not domains:
        raise ArtifactError(f"{origin}: metadata field 'domains' must be a non-empty list")
    names = []
    for i, record in enumerate(domains):
        if not isinstance(record, dict):
            raise ArtifactError(f"{origin}: domains[{i}] is not an object")
        bad = [key for key, kind in _DOMAIN_FIELDS.items() if not isinstance(record.get(key), kind)]
        if bad:
            raise ArtifactError(f"{origin}: domains[{i}] lacks or mistypes {', '.join(bad)}")
        listed = record.get("class_names")
        if listed is not None and (len(listed) != record["num_classes"] or class_names_sha256(listed) != record["class_names_sha256"]):
            raise ArtifactError(f"{origin}: domains[{i}] ({record['name']!r}) class_names do not match num_classes / class_names_sha256")
        if listed is not None:
            _check_names(listed, f"{origin}: domains[{i}] ({record['name']!r}) class_names")
        names.append(record["name"])
    if len(set(names)) != len(names):
        raise ArtifactError(f"{origin}: duplicate domain names in 'domains': {names}")
