"""A small factory over named CLIP configs (open_clip's own plus this package's tiny ones).

``create_clip(name, weights)`` returns a frozen, eval-mode :class:`Backbone` holding the open_clip
model, its tokenizer and its preprocessing constants. Names may be spelled as Dassl/CoOp do
(``ViT-B/16``) or as open_clip does (``ViT-B-16``, ``ViT-B-16-quickgelu``); OpenAI-format weights
always get QuickGELU (see :mod:`caspl_plugin.clip.weights`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import open_clip
import torch
from torch import nn

from .weights import WeightsSource, load_state_dict_into, resolve_weights

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False

#: Dassl/CoOp backbone names -> open_clip architecture names (OpenAI weights need QuickGELU).
DASSL_NAMES = {
    "ViT-B/16": "ViT-B-16",
    "ViT-B/32": "ViT-B-32",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
    "RN50": "RN50",
    "RN101": "RN101",
}

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _register_package_configs() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def list_named_models() -> list[str]:
    """Every architecture name :func:`create_clip` accepts (open_clip's and this package's)."""
    _register_package_configs()
    return sorted(set(open_clip.list_models()) | set(DASSL_NAMES))


def resolve_model_name(name: str, quick_gelu: bool = False) -> str:
    """Map a Dassl/CoOp or open_clip name to the open_clip architecture to build.

    ``quick_gelu=True`` (OpenAI-format weights) selects the ``-quickgelu`` variant where one exists.
    """
    _register_package_configs()
    arch = DASSL_NAMES.get(name, name)
    available = set(open_clip.list_models())
    if arch not in available:
        import difflib

        close = difflib.get_close_matches(name, sorted(available | set(DASSL_NAMES)), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"Unknown CLIP model {name!r}: expected a Dassl name ({', '.join(DASSL_NAMES)}) or an "
            f"open_clip model name (see caspl_plugin.clip.list_named_models()).{hint}"
        )
    if quick_gelu and not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in available:
        arch = f"{arch}-quickgelu"
    return arch


def uses_quick_gelu(model: nn.Module) -> bool:
    """True if the model's MLP activations are QuickGELU (as OpenAI's CLIP weights require)."""
    return any(type(m).__name__ == "QuickGELU" for m in model.modules())


@dataclass
class Backbone:
    """A frozen CLIP with what is needed to feed it: tokenizer and image preprocessing constants."""

    name: str
    arch: str
    model: nn.Module
    tokenizer: Callable
    weights: Optional[WeightsSource] = None
    mean: Sequence[float] = OPENAI_MEAN
    std: Sequence[float] = OPENAI_STD
    extra: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def describe(self) -> dict:
        """Geometry used to check prompt compatibility (widths, depths, sizes)."""
        m = self.model
        return {
            "backbone": self.name,
            "arch": self.arch,
            "text_width": int(m.transformer.width),
            "text_depth": len(m.transformer.resblocks),
            "vision_width": int(m.visual.transformer.width),
            "vision_depth": len(m.visual.transformer.resblocks),
            "embed_dim": int(m.visual.output_dim),
            "context_length": self.context_length,
            "image_size": self.image_size,
        }


def create_clip(
    name: str,
    weights: Optional[str] = None,
    *,
    weights_dir: Optional[str] = None,
    device: Optional[torch.device | str] = None,
) -> Backbone:
    """Build a frozen CLIP by name, with weights from a tag, a local file or a weights directory.

    Args:
        name: ``ViT-B/16`` (Dassl spelling), any open_clip model name, or a package config
            (``caspl-tiny-student``, ``caspl-tiny-teacher``, ``toy-student``, ``toy-teacher``).
        weights: ``None``/``"random"`` for random init, ``"openai"`` (or another open_clip pretrained
            tag), or a path to a local file (OpenAI JIT/state-dict ``.pt``, open_clip checkpoint,
            ``.safetensors``). ``None`` also looks in ``weights_dir`` / ``$CASPL_WEIGHTS_DIR``
            for a file named after the model, and falls back to random init only for the package's
            own tiny configs.
        weights_dir: directory to search for weight files (overrides ``$CASPL_WEIGHTS_DIR``).
        device: where to put the model (default CPU). Weights stay fp32; use autocast for AMP.
    """
    _register_package_configs()
    source = resolve_weights(name, weights, weights_dir=weights_dir)
    arch = resolve_model_name(name, quick_gelu=source.openai_format)
    if source.kind == "tag":
        model = open_clip.create_model(arch, pretrained=source.location, device="cpu")
    else:
        model = open_clip.create_model(arch, pretrained=None, device="cpu")
        if source.kind == "file":
            load_state_dict_into(model, source)
    if source.openai_format and not uses_quick_gelu(model):
        raise ValueError(
            f"OpenAI-format weights {source.location!r} need QuickGELU, but architecture {arch!r} "
            "uses GELU; use the '-quickgelu' variant of the model name."
        )
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    tokenizer = open_clip.get_tokenizer(arch)
    preprocess = getattr(model.visual, "preprocess_cfg", None) or {}
    return Backbone(
        name=name,
        arch=arch,
        model=model,
        tokenizer=tokenizer,
        weights=source,
        mean=tuple(preprocess.get("mean", OPENAI_MEAN)),
        std=tuple(preprocess.get("std", OPENAI_STD)),
    )
