"""Artifacts on disk: safetensors tensors with JSON metadata (boosting prompts, checkpoints) and the
restricted reader of other projects' pickled checkpoints (nothing in them is executed).

Owns every file format we write (boosting prompts, classifiers, the store's hashing) and the
restricted checkpoint reader; imports only files, names and version.
"""
from .boosting import ArtifactMismatchError, BoostingArtifact, class_names_sha256
from .checkpoint_reader import CheckpointError, read_checkpoint
from .store import ArtifactError, content_hash, load_artifact, save_artifact

__all__ = [
    "ArtifactError",
    "ArtifactMismatchError",
    "BoostingArtifact",
    "CheckpointError",
    "class_names_sha256",
    "content_hash",
    "load_artifact",
    "read_checkpoint",
    "save_artifact",
]
