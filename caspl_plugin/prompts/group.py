"""Prompt groups: the learnable (or frozen) tokens of one role, in the text and/or vision encoder.

A group holds, per encoder, one tensor ``[depth, n_tokens, width]``: row 0 are the layer-0 tokens,
row ``i`` the deep tokens that replace the group's slice at the input of block ``i``
(``i = 1 .. depth-1``). Where the group sits in the token sequence is decided by its *role*
(:mod:`caspl_plugin.prompts.layout`), never by the group itself.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .layout import ROLES


@dataclass(frozen=True)
class PromptSpec:
    """How many tokens a group places in each encoder, and down to which depth.

    ``depth = 1`` means layer-0 tokens only; ``depth = d`` adds deep tokens at blocks ``1 .. d-1``.
    """

    n_text: int = 0
    n_vision: int = 0
    depth_text: int = 1
    depth_vision: int = 1

    def __post_init__(self):
        for field_name, value in asdict(self).items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"PromptSpec.{field_name} must be a non-negative int, got {value!r}")
        if self.n_text and self.depth_text < 1:
            raise ValueError(f"PromptSpec.depth_text must be >= 1 when n_text > 0, got {self.depth_text}")
        if self.n_vision and self.depth_vision < 1:
            raise ValueError(f"PromptSpec.depth_vision must be >= 1 when n_vision > 0, got {self.depth_vision}")

    def clamped(self, text_depth: int, vision_depth: int) -> "PromptSpec":
        """The same spec with depths limited to an encoder's number of blocks."""
        return PromptSpec(self.n_text, self.n_vision, min(self.depth_text, text_depth), min(self.depth_vision, vision_depth))

    @property
    def num_parameters_per_width(self) -> tuple[int, int]:
        return self.n_text * self.depth_text, self.n_vision * self.depth_vision


@dataclass(frozen=True)
class PromptTokens:
    """The token values one group places into one encoder: one tensor per layer, layer 0 first.

    Each tensor is ``[n, width]`` (shared by every sequence) or ``[sets, n, width]``: one set per
    sequence, or, with ``rows`` (``[sequences]`` long), the value set each sequence takes (e.g.
    CoCoOp's image-conditioned context: one set per image, ``rows[i * C + c] = i``), which lets the
    text tower run a shared prefix once per set.
    """

    name: str
    role: str
    layers: tuple[Tensor, ...]
    rows: Optional[Tensor] = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Unknown prompt role {self.role!r} for {self.name!r}; expected one of {ROLES}")
        if not self.layers:
            raise ValueError(f"Prompt {self.name!r} has no layers")
        n = self.layers[0].shape[-2]
        if any(t.shape[-2] != n for t in self.layers):
            raise ValueError(f"Prompt {self.name!r}: every layer must hold {n} tokens, got {[t.shape[-2] for t in self.layers]}")

    @property
    def n(self) -> int:
        return int(self.layers[0].shape[-2])

    def slice(self, start: int, stop: int) -> "PromptTokens":
        """The prompts of sequences ``start .. stop-1``: shared values stay, value sets are re-mapped,
        one-per-sequence values are sliced."""
        if self.rows is not None:
            return PromptTokens(self.name, self.role, self.layers, self.rows[start:stop])
        return PromptTokens(self.name, self.role, tuple(v[start:stop] if v.dim() == 3 else v for v in self.layers))

    def per_row(self, layer: int) -> Tensor:
        """Layer ``layer``'s values, ``[n, width]`` or one set per sequence ``[rows, n, width]``."""
        values = self.layers[layer]
        return values[self.rows.to(values.device)] if self.rows is not None and values.dim() == 3 else values

    @property
    def depth(self) -> int:
        return len(self.layers)


class PromptGroup(nn.Module):
    """Prompt tokens of one role (``"boosting"`` or ``"adapting"``) for the text and vision encoders."""

    def __init__(
        self,
        name: str,
        role: str,
        spec: PromptSpec,
        text_width: int,
        vision_width: int,
        *,
        learnable: bool = True,
        std: float = 0.02,
        text_init: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"Unknown prompt role {role!r}; expected one of {ROLES}")
        self.name, self.role, self.spec = name, role, spec
        self.text = self._make(spec.depth_text, spec.n_text, text_width, std, generator)
        self.vision = self._make(spec.depth_vision, spec.n_vision, vision_width, std, generator)
        if text_init is not None:
            if self.text is None or tuple(text_init.shape) != (spec.n_text, text_width):
                raise ValueError(
                    f"text_init for {name!r} must have shape ({spec.n_text}, {text_width}), got {tuple(text_init.shape)}"
                )
            with torch.no_grad():
                self.text[0].copy_(text_init)
        self.set_learnable(learnable)

    @staticmethod
    def _make(depth, n, width, std, generator) -> Optional[nn.Parameter]:
        if n == 0:
            return None
        values = torch.empty(depth, n, width)
        nn.init.normal_(values, std=std, generator=generator)
        return nn.Parameter(values)

    @property
    def learnable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def set_learnable(self, learnable: bool) -> "PromptGroup":
        for p in self.parameters():
            p.requires_grad_(learnable)
        return self

    def text_tokens(self) -> Optional[PromptTokens]:
        return None if self.text is None else PromptTokens(self.name, self.role, tuple(self.text.unbind(0)))

    def vision_tokens(self) -> Optional[PromptTokens]:
        return None if self.vision is None else PromptTokens(self.name, self.role, tuple(self.vision.unbind(0)))

    def tensors(self) -> dict[str, Tensor]:
        """The group's values by encoder (``"text"``, ``"vision"``), detached, as stored in artifacts."""
        return {k: p.detach() for k, p in (("text", self.text), ("vision", self.vision)) if p is not None}

    @torch.no_grad()
    def load_tensors(self, tensors: dict[str, Tensor], *, depth_fill: str = "error") -> None:
        """Copy stored values in. ``depth_fill="keep"`` lets a shallower source fill the first layers
        and leaves deeper layers at their initial values (the authors' PromptSRC cascade)."""
        for key, param in (("text", self.text), ("vision", self.vision)):
            source = tensors.get(key)
            if param is None and source is None:
                continue
            if param is None or source is None:
                raise ValueError(f"Prompt group {self.name!r}: {key} tokens present on one side only")
            if source.shape[1:] != param.shape[1:]:
                raise ValueError(f"Prompt group {self.name!r}: {key} tokens {tuple(source.shape)} do not fit {tuple(param.shape)}")
            if source.shape[0] != param.shape[0] and depth_fill != "keep":
                raise ValueError(f"Prompt group {self.name!r}: {key} depth {source.shape[0]} != {param.shape[0]}")
            rows = min(source.shape[0], param.shape[0])
            param[:rows].copy_(source[:rows].to(param.dtype))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, role={self.role!r}, spec={self.spec}, learnable={self.learnable}"


def collect_tokens(groups: Sequence[PromptGroup], encoder: str) -> list[PromptTokens]:
    """The ``"text"`` or ``"vision"`` tokens of several groups (groups without any are skipped)."""
    if encoder not in ("text", "vision"):
        raise ValueError(f"encoder must be 'text' or 'vision', got {encoder!r}")
    tokens = (g.text_tokens() if encoder == "text" else g.vision_tokens() for g in groups)
    return [t for t in tokens if t is not None]
