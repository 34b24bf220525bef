"""Artifact files: tensors in safetensors, one JSON metadata document in the safetensors header.

Every artifact kind (boosting prompts, classifiers, ...) is written and read through
:func:`save_artifact` / :func:`load_artifact`. The header metadata holds a single key,
``"caspl"``, whose value is the JSON document; it must name the artifact ``format`` (a string)
and ``format_version`` (an int). :func:`save_artifact` adds ``content_sha256``, the
:func:`content_hash` of the whole artifact: the metadata as canonical JSON (sorted keys, no
whitespace, every key but ``content_sha256`` itself) and the tensors; ``content_sha256_covers:
"metadata+tensors"`` says so. :func:`load_artifact` refuses a file whose metadata or tensors no
longer match it. Files written by older versions (no ``content_sha256_covers``; the hash covers
the tensors only) are still read, with a warning that their metadata is not covered
(:data:`LEGACY_HASH_NOTICE`). Writes are atomic: a temporary file in the destination folder, then
``os.replace``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from ..files import atomic_write, canonical_json

__all__ = [
    "ArtifactError", "HashStatus", "LEGACY_HASH_NOTICE", "METADATA_KEY", "canonical_json", "content_hash",
    "hash_status", "load_artifact", "save_artifact",
]

logger = logging.getLogger(__name__)

METADATA_KEY = "caspl"
HASH_KEY = "content_sha256"
HASH_SCOPE_KEY = "content_sha256_covers"
HASH_SCOPE = "metadata+tensors"
LEGACY_HASH_NOTICE = (
    "written by an older version of caspl-plugin: its metadata is not covered by the content hash "
    "(only the tensors are); re-save it to protect the metadata too"
)


class ArtifactError(ValueError):
    """An artifact file is missing pieces, corrupted, of another kind, or does not fit its use."""


def content_hash(tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, Any]] = None) -> str:
    """sha256 over the metadata's canonical JSON (without ``content_sha256``), when given, then the
    tensors' sorted names, dtypes, shapes and raw (little-endian) bytes.

    Without ``metadata`` this is the tensors-only hash that older versions recorded.
    """
    digest = hashlib.sha256()
    if metadata is not None:
        document = canonical_json({key: value for key, value in metadata.items() if key != HASH_KEY})
        digest.update(b"metadata %d\n" % len(document) + document)
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
    document = {key: value for key, value in metadata.items() if key != HASH_KEY}
    document[HASH_SCOPE_KEY] = HASH_SCOPE
    try:
        document = json.loads(json.dumps(document, ensure_ascii=False, allow_nan=False))  # as it will be read
        document[HASH_KEY] = content_hash(prepared, document)
        header = {METADATA_KEY: json.dumps(document, ensure_ascii=False, allow_nan=False)}
    except (TypeError, ValueError) as error:
        raise ArtifactError(f"{path}: metadata is not JSON-serialisable: {error}") from error

    atomic_write(path, save(prepared, metadata=header))
    return document[HASH_KEY]


@dataclass(frozen=True)
class HashStatus:
    """The content hash check of one artifact: ``ok``, what the hash covers, and the two values."""

    ok: bool
    covers_metadata: bool
    recorded: Optional[str]
    computed: str

    @property
    def notice(self) -> Optional[str]:
        return None if self.covers_metadata else LEGACY_HASH_NOTICE


def hash_status(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> HashStatus:
    """Recompute the content hash of ``(tensors, metadata)`` as it was recorded (current or older scope)."""
    scope = metadata.get(HASH_SCOPE_KEY)
    covers_metadata = HASH_SCOPE_KEY in metadata
    if covers_metadata and scope != HASH_SCOPE:
        return HashStatus(False, True, metadata.get(HASH_KEY), f"(unknown hash scope {scope!r})")
    try:
        computed = content_hash(tensors, metadata if covers_metadata else None)
    except ValueError as error:  # NaN/Infinity in an edited header has no canonical JSON
        return HashStatus(False, covers_metadata, metadata.get(HASH_KEY), f"(metadata not hashable: {error})")
    return HashStatus(metadata.get(HASH_KEY) == computed, covers_metadata, metadata.get(HASH_KEY), computed)


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
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:  # corrupt headers fail in several ways
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
        status = hash_status(tensors, metadata)
        if not status.ok:
            covered = "metadata and tensors do" if status.covers_metadata else "tensors do"
            raise ArtifactError(
                f"{path}: its {covered} not match the content hash recorded in the file "
                f"(recorded {status.recorded}, computed {status.computed}); the file was modified or is corrupted"
            )
        if status.notice:
            logger.warning("%s: %s", path, status.notice)
    return tensors, metadata
