"""Artifacts on disk: safetensors tensors with JSON metadata (boosting prompts, and the official import)."""
from .boosting import ArtifactMismatchError, BoostingArtifact, class_names_sha256
from .store import ArtifactError, content_hash, load_artifact, save_artifact

__all__ = [
    "ArtifactError",
    "ArtifactMismatchError",
    "BoostingArtifact",
    "class_names_sha256",
    "content_hash",
    "load_artifact",
    "save_artifact",
]
