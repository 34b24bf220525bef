"""Pre-trained toy CLIPs shipped with the package: ``toy-teacher`` and ``toy-student``.

Both were trained contrastively on the ToyShapes domain (:mod:`caspl_plugin.toy.domain`) by
``scripts/pretrain_toy_clips.py``: the teacher on images and captions of all 36 classes, the
student (half the width) on the 18 base classes only, so that it is weak on the novel ones.
``create_clip("toy-student")`` / ``create_clip("toy-teacher")`` load them (fp32) through
:data:`caspl_plugin.clip.weights.PACKAGE_WEIGHT_LOADERS`.

Each model is one fp16 artifact (:mod:`caspl_plugin.artifacts.store`: safetensors with JSON
metadata holding the training recipe and the measured accuracies). To stay small it keeps only the
token-embedding rows the domain uses (``token_embedding.ids`` / ``token_embedding.rows``); every
other row was never updated by training (it still held its N(0, 0.02) initialisation) and is
restored as deterministic N(0, 0.02) noise, which is equivalent. ``manifest.json`` next to the
files pins each file's content hash and the command that regenerates them; loading refuses a file
whose tensors do not match it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch

from ..artifacts.store import ArtifactError, load_artifact

__all__ = [
    "FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "REGENERATE_COMMAND", "TOY_MODELS", "WEIGHTS_DIR",
    "ToyWeightsError", "load_toy_student", "load_toy_teacher", "load_toy_weights", "pack_state_dict",
    "read_weights_manifest", "toy_metadata", "unpack_state_dict", "weights_path",
]

TOY_MODELS = ("toy-student", "toy-teacher")
WEIGHTS_DIR = Path(__file__).with_name("weights")
MANIFEST_FILE = "manifest.json"
FORMAT = "caspl-toy-clip"
FORMAT_VERSION = 1
REGENERATE_COMMAND = "python scripts/pretrain_toy_clips.py --out caspl_plugin/toy/weights"

TOKEN_EMBEDDING = "token_embedding.weight"
KEPT_IDS = "token_embedding.ids"
KEPT_ROWS = "token_embedding.rows"
#: how rows missing from the file are refilled: N(0, std) from a fixed seed (open_clip's init std)
FILL_STD = 0.02
FILL_SEED = 0


class ToyWeightsError(ArtifactError):
    """A shipped toy weight file is missing, of another model, or does not match its pinned hash."""


def weights_path(name: str, weights_dir: Union[str, os.PathLike, None] = None) -> Path:
    """The weight file of toy model ``name``."""
    _check_name(name)
    return Path(weights_dir if weights_dir is not None else WEIGHTS_DIR) / f"{name}.safetensors"


def read_weights_manifest(weights_dir: Union[str, os.PathLike, None] = None) -> dict:
    """The manifest (pinned content hashes and regeneration command) of a weights folder."""
    path = Path(weights_dir if weights_dir is not None else WEIGHTS_DIR) / MANIFEST_FILE
    if not path.is_file():
        raise ToyWeightsError(f"{path} is missing; regenerate the toy weights with: {REGENERATE_COMMAND}")
    return json.loads(path.read_text(encoding="utf-8"))


def pack_state_dict(state: Mapping[str, torch.Tensor], keep_ids: Sequence[int]) -> dict[str, torch.Tensor]:
    """A CLIP state dict as stored: floating tensors in fp16, the token embedding cut to ``keep_ids``."""
    ids = torch.tensor(sorted(set(int(i) for i in keep_ids)), dtype=torch.long)
    packed = {k: (v.detach().half() if v.is_floating_point() else v.detach()) for k, v in state.items() if k != TOKEN_EMBEDDING}
    packed[KEPT_IDS] = ids
    packed[KEPT_ROWS] = state[TOKEN_EMBEDDING].detach()[ids].half()
    return packed


def unpack_state_dict(tensors: Mapping[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """The fp32 state dict of a packed one: the full token embedding, missing rows refilled by noise."""
    rows, ids = tensors[KEPT_ROWS], tensors[KEPT_IDS]
    generator = torch.Generator().manual_seed(FILL_SEED)
    embedding = torch.randn(vocab_size, rows.shape[1], generator=generator) * FILL_STD
    embedding[ids] = rows.float()
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items() if k not in (KEPT_IDS, KEPT_ROWS)}
    state[TOKEN_EMBEDDING] = embedding
    return state


def load_toy_weights(name: str, path: Union[str, os.PathLike, None] = None) -> dict[str, torch.Tensor]:
    """The fp32 state dict of toy model ``name`` from ``path`` (default: the shipped file).

    The file's tensors must match the content hash that the package's manifest pins for ``name``.
    """
    path = Path(path) if path is not None else weights_path(name)
    tensors, metadata = _read_verified(name, path)
    return unpack_state_dict(tensors, int(metadata["vocab_size"]))


def toy_metadata(name: str, path: Union[str, os.PathLike, None] = None) -> dict[str, Any]:
    """The JSON metadata of toy model ``name``: architecture, training recipe, measured accuracies."""
    path = Path(path) if path is not None else weights_path(name)
    return _read_verified(name, path)[1]


def load_toy_student() -> dict[str, torch.Tensor]:
    """State dict of the shipped ``toy-student`` (the loader ``create_clip`` uses)."""
    return load_toy_weights("toy-student")


def load_toy_teacher() -> dict[str, torch.Tensor]:
    """State dict of the shipped ``toy-teacher`` (the loader ``create_clip`` uses)."""
    return load_toy_weights("toy-teacher")


def _check_name(name: str) -> None:
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; expected one of {list(TOY_MODELS)}")


def _read_verified(name: str, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    _check_name(name)
    if not path.is_file():
        raise ToyWeightsError(f"toy weights for {name!r} not found at {path}; regenerate them with: {REGENERATE_COMMAND}")
    pinned = read_weights_manifest().get("models", {}).get(name, {}).get("content_sha256")
    tensors, metadata = load_artifact(path, expected_format=FORMAT, supported_versions=(FORMAT_VERSION,))
    if metadata.get("model") != name:
        raise ToyWeightsError(f"{path} holds weights of {metadata.get('model')!r}, expected {name!r}")
    if metadata["content_sha256"] != pinned:
        raise ToyWeightsError(
            f"{path}: its content hash {metadata['content_sha256']} differs from the hash pinned for {name!r} in "
            f"{WEIGHTS_DIR / MANIFEST_FILE} ({pinned}); the file was modified or replaced. "
            f"Regenerate the toy weights with: {REGENERATE_COMMAND}"
        )
    return tensors, metadata
