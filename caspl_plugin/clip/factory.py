"""A small factory over named CLIP configs (open_clip's own plus this package's tiny ones).

``create_clip(name, weights)`` returns a frozen, eval-mode :class:`Backbone` holding the open_clip
model, its tokenizer and its preprocessing constants. Names may be spelled as Dassl/CoOp do
(``ViT-B/16``) or as open_clip does (``ViT-B-16``, ``ViT-B-16-quickgelu``). The activation follows
the weights: OpenAI-format weights always get QuickGELU, other weights keep the architecture's own
(see :mod:`caspl_plugin.clip.weights`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import open_clip
import torch
from torch import nn

from .names import DASSL_NAMES, list_named_models, resolve_model_name
from .weights import (
    IncompatibleWeightsError,
    PathLike,
    WeightsSource,
    hub_weights_file,
    load_state_dict_into,
    read_weights,
    resolve_weights,
    tag_config,
)

logger = logging.getLogger(__name__)

__all__ = ["Backbone", "DASSL_NAMES", "create_clip", "list_named_models", "resolve_model_name", "uses_quick_gelu"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


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
    weights: Optional[PathLike] = None,
    *,
    weights_dir: Optional[PathLike] = None,
    device: Optional[torch.device | str] = None,
    quick_gelu: Optional[bool] = None,
) -> Backbone:
    """Build a frozen CLIP by name, with weights from a tag, a local file or a weights directory.

    Args:
        name: ``ViT-B/16`` (Dassl spelling), any open_clip model name, or a package config
            (``caspl-tiny-student``, ``caspl-tiny-teacher``, ...).
        weights: ``"random"`` for random init, ``"openai"`` (or another open_clip pretrained tag),
            a path to a local file (OpenAI TorchScript/state-dict ``.pt``, open_clip checkpoint,
            ``.safetensors``) or to a directory holding one named after the model. ``None`` looks in
            ``weights_dir`` / ``$CASPL_WEIGHTS_DIR``, then uses a package model's registered weights
            (or random init for package configs), else the ``openai`` tag.
        weights_dir: directory to search for weight files (before ``$CASPL_WEIGHTS_DIR``).
        device: where to put the model (default CPU). Weights stay fp32; use autocast for AMP.
        quick_gelu: force the activation (True: QuickGELU, False: GELU). By default it follows
            the weights (OpenAI-format weights -> QuickGELU), else the architecture's config.

    Raises:
        ValueError: unknown model name or pretrained tag.
        WeightsNotFoundError: no weights found; the message lists every place searched.
        IncompatibleWeightsError: weights that do not fit the architecture or the requested activation.
    """
    source = resolve_weights(name, weights, weights_dir=weights_dir)
    if source.kind == "hub":
        return _create_hub_clip(name, source, device)
    state, source = read_weights(source)
    if quick_gelu is not None and source.quick_gelu is not None and quick_gelu != source.quick_gelu:
        raise IncompatibleWeightsError(
            f"Weights {source} were trained with {_activation_name(source.quick_gelu)}, but quick_gelu="
            f"{quick_gelu} asks CLIP model {name!r} for {_activation_name(quick_gelu)}; leave quick_gelu unset."
        )
    use_quick_gelu = source.quick_gelu if quick_gelu is None else quick_gelu
    arch = resolve_model_name(name, quick_gelu=use_quick_gelu)
    tag_cfg = tag_config(name, source.location)[1] if source.kind == "tag" else {}
    with _quiet_random_init_warning(state is not None):
        model = open_clip.create_model(
            arch,
            pretrained=None,
            device="cpu",
            pretrained_text=False,
            force_preprocess_cfg={k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg} or None,
            **({} if use_quick_gelu is None else {"quick_gelu": use_quick_gelu}),
        )
    if use_quick_gelu is not None and uses_quick_gelu(model) != use_quick_gelu:
        raise IncompatibleWeightsError(
            f"CLIP model {name!r} ({arch}) could not be built with {_activation_name(use_quick_gelu)}, "
            f"which weights {source} need."
        )
    if state is not None:
        load_state_dict_into(model, state, source, f"{name!r} (open_clip architecture {arch!r})")
        logger.info("Loaded CLIP %s (%s) weights from %s", name, arch, source.path or source)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    preprocess = getattr(model.visual, "preprocess_cfg", None) or {}
    return Backbone(
        name=name,
        arch=arch,
        model=model,
        tokenizer=_tokenizer(arch),
        weights=source,
        mean=tuple(preprocess.get("mean", OPENAI_MEAN)),
        std=tuple(preprocess.get("std", OPENAI_STD)),
    )


class HubModelUnavailable(FileNotFoundError):
    """An ``hf-hub:`` model whose config or weights open_clip could not read (offline and not cached)."""


def _create_hub_clip(name: str, source: WeightsSource, device) -> Backbone:
    """A model open_clip reads from the Hugging Face hub (config and weights), frozen and in eval mode;
    the weights file it read (the hub cache's) is recorded for the classifiers' digests."""
    try:
        model = open_clip.create_model(name, device="cpu")
    except Exception as error:  # open_clip raises RuntimeError/OSError/... for an unreachable hub or cache
        raise HubModelUnavailable(
            f"{name}: open_clip could not read its config and weights from the Hugging Face hub or its cache "
            f"({' '.join(str(error).split())[:300]}); run once online (HF_HUB_OFFLINE unset) to cache them"
        ) from None
    path = hub_weights_file(name)
    model.eval().requires_grad_(False)
    if device is not None:
        model.to(device)
    preprocess = getattr(model.visual, "preprocess_cfg", None) or {}
    return Backbone(name=name, arch=name, model=model, tokenizer=_tokenizer(name),
                    weights=dataclasses.replace(source, path=path),
                    mean=tuple(preprocess.get("mean", OPENAI_MEAN)), std=tuple(preprocess.get("std", OPENAI_STD)))


@functools.lru_cache(maxsize=None)
def _tokenizer(arch: str) -> Callable:
    """open_clip's tokenizer for ``arch``, read once per process (it parses the BPE vocabulary)."""
    return open_clip.get_tokenizer(arch)


def _activation_name(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning(weights_follow: bool) -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning when weights are loaded right after."""
    if not weights_follow:
        yield
        return
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
