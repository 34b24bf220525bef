"""Artifacts on disk: safetensors tensors with JSON metadata (boosting prompts, and the official import)."""
from .boosting import ArtifactMismatchError, BoostingArtifact, class_names_sha256
from .checkpoint_reader import CheckpointError, read_checkpoint
from .official import import_official
from .store import ArtifactError, content_hash, load_artifact, save_artifact

__all__ = [
    "ArtifactError",
    "ArtifactMismatchError",
    "BoostingArtifact",
    "CheckpointError",
    "class_names_sha256",
    "content_hash",
    "import_official",
    "load_artifact",
    "read_checkpoint",
    "save_artifact",
]
