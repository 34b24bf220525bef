"""Where CLIP weights come from, and loading them without unpickling anything.

Sources, in the order :func:`resolve_weights` tries them:

1. an explicit path (OpenAI TorchScript ``.pt``, OpenAI/open_clip state dict, ``.safetensors``);
2. an open_clip pretrained tag such as ``"openai"`` (open_clip's own download and cache);
3. ``weights=None``: a file named after the model in ``weights_dir`` or ``$CASPL_WEIGHTS_DIR``;
   the package's own tiny configs fall back to random initialisation.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

WEIGHTS_DIR_ENV = "CASPL_WEIGHTS_DIR"
RANDOM = "random"

#: Integers that OpenAI's TorchScript state dicts carry next to the tensors.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
#: Models that are fine with random weights when no file is given.
PACKAGE_MODELS = ("caspl-tiny-student", "caspl-tiny-teacher")
#: Package models that ship default weights: name -> zero-argument loader returning a state dict.
PACKAGE_WEIGHT_LOADERS: dict = {}


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from: ``kind`` is ``random``, ``tag`` or ``file``."""

    kind: str
    location: Optional[str] = None
    openai_format: bool = False

    def __str__(self) -> str:
        return self.kind if self.location is None else f"{self.kind}:{self.location}"


def _candidate_files(name: str, directory: Path) -> list[Path]:
    stems = {name, name.replace("/", "-"), name.replace("/", "-").replace("@", "-")}
    return [directory / f"{stem}{ext}" for stem in sorted(stems) for ext in (".pt", ".safetensors", ".bin", ".pth")]


def resolve_weights(name: str, weights: Optional[str], *, weights_dir: Optional[str] = None) -> WeightsSource:
    """Decide where ``name``'s weights come from; fail at once, naming every place searched."""
    if weights == RANDOM:
        return WeightsSource("random")
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_file():
            return WeightsSource("file", str(path), openai_format=_looks_openai(path))
        if os.sep in weights or path.suffix in (".pt", ".pth", ".bin", ".safetensors"):
            raise FileNotFoundError(f"Weights file for {name!r} not found: {weights}")
        return WeightsSource("tag", weights, openai_format=(weights == "openai"))
    searched = []
    for directory in (weights_dir, os.environ.get(WEIGHTS_DIR_ENV)):
        if not directory:
            continue
        for candidate in _candidate_files(name, Path(directory).expanduser()):
            searched.append(str(candidate))
            if candidate.is_file():
                return WeightsSource("file", str(candidate), openai_format=_looks_openai(candidate))
    if name in PACKAGE_MODELS:
        return WeightsSource("random")
    places = "\n  ".join(searched) if searched else f"(no weights directory given; ${WEIGHTS_DIR_ENV} is unset)"
    raise FileNotFoundError(
        f"No weights for CLIP model {name!r}. Searched:\n  {places}\n"
        f"Provide them with weights='openai' (downloads through open_clip when online), "
        f"weights=<path to a .pt/.safetensors file>, or put '{name.replace('/', '-')}.pt' in a directory "
        f"named by weights_dir / ${WEIGHTS_DIR_ENV}. Use weights='random' for random initialisation."
    )


def _looks_openai(path: Path) -> bool:
    """OpenAI's files are TorchScript archives or state dicts without an open_clip wrapper."""
    if path.suffix == ".safetensors":
        return False
    return _is_torchscript(path) or "openai" in path.name.lower() or path.name.startswith(("ViT-", "RN"))


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file as a plain state dict (never unpickles arbitrary objects)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    elif _is_torchscript(path):
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(state).__name__})")
    cleaned = {}
    for key, value in state.items():
        if key in _OPENAI_EXTRA_KEYS or not isinstance(value, torch.Tensor):
            continue
        cleaned[key[len("module."):] if key.startswith("module.") else key] = value
    return cleaned


def load_state_dict_into(model: nn.Module, source: WeightsSource) -> None:
    """Load ``source`` into ``model`` strictly, in fp32; report missing/unexpected keys clearly."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(source.location).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Weights {source.location} do not fit the model: {len(missing)} missing key(s) "
            f"{missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
        )
