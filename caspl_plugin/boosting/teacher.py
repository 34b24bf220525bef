"""Teacher CLIPs for the boosting phase: any open_clip model, read through its own towers.

The teacher needs no prompts, so any open_clip architecture can teach (attention-pooled or
ModifiedResNet image towers, timm trunks, other pooling). :func:`teacher_identity` names a teacher
for the teacher-view cache (name, architecture, weights digest, image size, mean/std), and
:func:`load_text_tower` builds *only* the text side of a CLIP, for runs that read the teacher's
image features from a cache and must never build its image tower.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import open_clip
import torch
from torch import Tensor, nn

from ..clip.names import resolve_model_name
from ..clip.weights import PathLike, WeightsSource, read_weights, resolve_weights, weights_digest

logger = logging.getLogger(__name__)

#: Top-level state-dict keys of open_clip's built-in (non-custom) text tower.
_TEXT_KEYS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def state_digest(state: dict[str, Tensor]) -> str:
    """sha256 over a state dict's keys, dtypes, shapes and bytes (sorted by key)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def teacher_weights_identity(source: Optional[WeightsSource], model: Optional[nn.Module] = None) -> str:
    """What names a teacher's weights in a cache: ``sha256:`` + the weights file's digest
    (:func:`~caspl_plugin.clip.weights.weights_digest`), ``state:`` + a package model's state
    digest, or, for random weights, ``random:`` + ``model``'s state digest (such a teacher cannot be
    re-created later, so a cache of it can only be used in the same process).
    """
    if source is not None and source.path:
        return "sha256:" + weights_digest(source)
    if source is not None and source.kind == "package":
        state, _ = read_weights(source)
        return "state:" + state_digest(state)
    if model is None:
        raise ValueError(f"weights {source} have no file to digest and no model was given")
    return "random:" + state_digest(model.state_dict())


def image_size_of(model: nn.Module) -> int:
    """The square input size of an open_clip image tower (ViT, ModifiedResNet or timm trunk)."""
    size = getattr(model.visual, "image_size", None)
    if size is None:
        raise ValueError(f"CLIP image tower {type(model.visual).__name__} does not say its image size")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def teacher_identity(backbone) -> dict:
    """What names a teacher for the cache: name, architecture, weights digest, image size, mean/std."""
    return {
        "name": backbone.name,
        "arch": backbone.arch,
        "weights": str(backbone.weights) if backbone.weights is not None else None,
        "weights_digest": teacher_weights_identity(backbone.weights, backbone.model),
        "image_size": image_size_of(backbone.model),
        "mean": [float(v) for v in backbone.mean],
        "std": [float(v) for v in backbone.std],
    }


class TextOnlyCLIP(nn.Module):
    """The text side of an open_clip CLIP (text tower + logit scale); ``visual`` is None."""

    visual = None

    def __init__(self, text: nn.Module, logit_scale: Tensor):
        super().__init__()
        self.text = text
        self.logit_scale = nn.Parameter(logit_scale.detach().clone().reshape(()), requires_grad=False)

    @property
    def context_length(self) -> int:
        return int(self.text.context_length)

    def encode_text(self, tokens: Tensor, normalize: bool = False) -> Tensor:
        features = self.text(tokens)
        return nn.functional.normalize(features, dim=-1) if normalize else features


@dataclass
class TextTower:
    """A teacher's text side with what is needed to use it: tokenizer and weights identity."""

    name: str
    arch: str
    model: TextOnlyCLIP
    tokenizer: Callable
    weights: WeightsSource
    weights_digest: str


def load_text_tower(
    name: str,
    weights: Optional[PathLike] = None,
    *,
    weights_dir: Optional[PathLike] = None,
    device: Optional[torch.device | str] = None,
) -> TextTower:
    """Build only the text tower of CLIP ``name`` (its image tower is never constructed).

    Weights are found as :func:`~caspl_plugin.clip.create_clip` finds them; random weights are
    refused (a random text tower cannot match the teacher a cache was made with).
    """
    source = resolve_weights(name, weights, weights_dir=weights_dir)
    state, source = read_weights(source)
    if state is None:
        raise ValueError(
            f"Teacher {name!r} has random weights: a cached run needs the teacher's weights (a file, tag "
            "or package model) to rebuild its text tower exactly"
        )
    arch = resolve_model_name(name, quick_gelu=source.quick_gelu)
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"No open_clip config for CLIP model {arch!r}")
    quick_gelu = bool(cfg.get("quick_gelu", False)) if source.quick_gelu is None else bool(source.quick_gelu)
    custom = bool(cfg.get("custom_text")) or "hf_model_name" in cfg.get("text_cfg", {})
    # open_clip's own text-tower builder: the same module CLIP(...) builds for its text side
    text = open_clip.model._build_text_tower(cfg["embed_dim"], cfg["text_cfg"], quick_gelu, None)
    if custom:
        text_state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    else:
        text_state = {k: v for k, v in state.items() if k.split(".", 1)[0] in _TEXT_KEYS}
    missing, unexpected = text.load_state_dict(text_state, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected or "logit_scale" not in state:
        raise ValueError(
            f"Weights {source} do not fit the text tower of {name!r} ({arch}): missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}{'' if 'logit_scale' in state else ', no logit_scale'}"
        )
    model = TextOnlyCLIP(text, state["logit_scale"]).eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    from ..clip.factory import _tokenizer

    source_digest = teacher_weights_identity(source)
    logger.info("Built the text tower of teacher %s (%s) from %s", name, arch, source)
    return TextTower(name, arch, model, _tokenizer(arch), source, source_digest)
