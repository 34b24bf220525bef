"""Artifact files: tensors in safetensors, one JSON metadata document in the safetensors header.

Every artifact kind (boosting prompts, classifiers, ...) is written and read through
:func:`save_artifact` / :func:`load_artifact`. The header metadata holds a single key,
``"caspl"``, whose value is the JSON document; it must name the artifact ``format`` (a string)
and ``format_version`` (an int). :func:`save_artifact` adds ``content_sha256``
(:func:`content_hash` of the tensors) and :func:`load_artifact` refuses a file whose tensors no
longer match it. Writes are atomic: a temporary file in the destination folder, then
``os.replace``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Collection, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..files import atomic_write

__all__ = ["ArtifactError", "METADATA_KEY", "content_hash", "load_artifact", "save_artifact"]

METADATA_KEY = "caspl"


class ArtifactError(ValueError):
    """An artifact file is missing pieces, corrupted, of another kind, or does not fit its use."""


def content_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors' sorted names, dtypes, shapes and raw (little-endian) bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        header = json.dumps([name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), raw.nbytes])
        digest.update(header.encode("utf-8") + b"\n")
        digest.update(memoryview(raw))
    return digest.hexdigest()


def _check_metadata(metadata: Mapping[str, Any], origin: str) -> None:
    if not isinstance(metadata, Mapping):
        raise ArtifactError(f"{origin}: metadata must be a JSON object, got {type(metadata).__name__}")
    if not isinstance(metadata.get("format"), str):
        raise ArtifactError(f"{origin}: metadata has no 'format' string (got {metadata.get('format')!r})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{origin}: metadata has no integer 'format_version' (got {version!r})")


def save_artifact(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> str:
    """Write ``tensors`` and ``metadata`` (plus its ``content_sha256``) to ``path`` atomically.

    Returns the content hash. The parent folder is created if needed; on any error the
    destination is left as it was and no temporary file remains.
    """
    path = os.fspath(path)
    _check_metadata(metadata, path)
    prepared: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise ArtifactError(
                f"{path}: tensors must map names to torch.Tensor, got {name!r}: {type(tensor).__name__}"
            )
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()  # safetensors refuses tensors that share memory
        seen.add(tensor.untyped_storage().data_ptr())
        prepared[name] = tensor
    document = dict(metadata, content_sha256=content_hash(prepared))
    try:
        header = {METADATA_KEY: json.dumps(document, ensure_ascii=False, allow_nan=False)}
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{path}: metadata is not JSON-serialisable: {error}") from error

    atomic_write(path, save(prepared, metadata=header))
    return document["content_sha256"]


def load_artifact(
    path: str | os.PathLike,
    *,
    expected_format: Optional[str] = None,
    supported_versions: Optional[Collection[int]] = None,
    verify: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact: ``(tensors, metadata)``.

    Args:
        expected_format: if given, the file's ``format`` must equal it.
        supported_versions: if given, the file's ``format_version`` must be one of them.
        verify: recompute the content hash and refuse a file whose tensors do not match it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"artifact not found: {path}")
    if not os.path.isfile(path):
        raise ArtifactError(f"{path} is not a file")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise ArtifactError(f"{path} is not a safetensors file ({error})") from error
    if METADATA_KEY not in header:
        raise ArtifactError(f"{path} has no '{METADATA_KEY}' metadata: it was not written as a caspl-plugin artifact")
    try:
        metadata = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path}: its '{METADATA_KEY}' metadata is not valid JSON ({error})") from error
    _check_metadata(metadata, path)
    if expected_format is not None and metadata["format"] != expected_format:
        raise ArtifactError(f"{path} is a {metadata['format']!r} artifact, expected {expected_format!r}")
    if supported_versions is not None and metadata["format_version"] not in supported_versions:
        raise ArtifactError(
            f"{path} has {metadata['format']} format version {metadata['format_version']}; this version of "
            f"caspl-plugin reads version(s) {', '.join(map(str, sorted(supported_versions)))}"
        )
    if verify:
        recorded, actual = metadata.get("content_sha256"), content_hash(tensors)
        if recorded != actual:
            raise ArtifactError(
                f"{path}: its tensors do not match the content hash recorded in the file "
                f"(recorded {recorded}, computed {actual}); the file was modified or is corrupted"
            )
    return tensors, metadata
