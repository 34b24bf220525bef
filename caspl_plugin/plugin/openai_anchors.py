"""Boosted anchors for host regularisers (``TRAINER.CASPL.ANCHOR boosted``).

Hosts that regularise against a second frozen CLIP (a zero-shot CLIP for hand-crafted text
features, PromptSRC's ``ZS_image_encoder``, a frozen teacher) compare with the vanilla CLIP. With
``ANCHOR boosted`` the boosting group is placed into those anchors too — the paper's "CLIP + boosting
prompts is the new original CLIP" — with the same token primitives as the prompted path:

- an anchor *CLIP* in OpenAI's layout (``visual``, ``transformer``, ``token_embedding``,
  ``ln_final``, ``text_projection``, ``encode_text``): its ``encode_text`` gets ``[SOS][boosting]
  [text . EOS]`` (token ids shifted per call, layer-0 tokens written after the token embedding,
  deep slices replaced at blocks ``1 .. depth-1``), its ``visual`` the boosting vision tokens;
- an anchor *vision tower* (``conv1 ... ln_pre ... proj``, e.g. ``ZS_image_encoder``):
  ``[CLS][patches][boosting]`` at ``ln_pre`` and the deep slices at its blocks.

Anchors are searched among the host model's submodules and the trainer's other modules; the host's
own prompted encoders are never anchors. Features the host computed before the boosting prompts
were attached (e.g. PromptSRC's ``fixed_embeddings``, made in its constructor) stay as they are.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Iterator, Optional

from torch import Tensor, nn

from ..prompts import PromptGroup, insert_token_ids, insert_tokens, place_tokens

logger = logging.getLogger(__name__)

_CLIP_PARTS = ("visual", "transformer", "token_embedding", "ln_final", "text_projection")
_TOWER_PARTS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post", "proj")


def _blocks(module: nn.Module) -> Optional[nn.Sequential]:
    blocks = getattr(getattr(module, "transformer", None), "resblocks", None)
    if blocks is None:
        blocks = getattr(module, "resblocks", None)
    return blocks if isinstance(blocks, nn.Sequential) else None


def is_openai_clip(module: nn.Module) -> bool:
    """A CLIP in OpenAI's layout (``visual``, ``transformer``, ``token_embedding`` ... ``encode_text``)."""
    return all(hasattr(module, p) for p in _CLIP_PARTS) and callable(getattr(module, "encode_text", None))


def is_vision_tower(module: nn.Module) -> bool:
    """A ViT image tower in OpenAI's layout (``conv1`` ... ``ln_pre``, ``transformer``, ``ln_post``, ``proj``)."""
    return all(hasattr(module, p) for p in _TOWER_PARTS) and _blocks(module) is not None


def _candidates(handle, trainer) -> Iterator[tuple[str, nn.Module]]:
    yield from handle.model.named_modules()
    for name, value in (vars(trainer) if trainer is not None else {}).items():
        model = value.module if isinstance(value, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else value
        if isinstance(model, nn.Module) and model is not handle.model:
            yield from ((f"trainer.{name}" + (f".{sub}" if sub else ""), m) for sub, m in model.named_modules())


def find_anchors(handle, trainer=None) -> tuple[list[tuple[str, nn.Module]], list[tuple[str, nn.Module]]]:
    """``(anchor CLIPs, anchor vision towers)`` of a host, by name; the host's own encoders excluded."""
    own = {id(handle.model.image_encoder), id(getattr(handle.model.text_encoder, "transformer", None))}
    clips, towers, seen = [], [], set(own)
    for name, module in _candidates(handle, trainer):
        if id(module) in seen:
            continue
        if is_openai_clip(module) and id(module.visual) not in own and id(module.transformer) not in own:
            clips.append((name or "model", module))
            seen.update({id(module), id(module.visual), id(module.transformer)})
        elif is_vision_tower(module):
            towers.append((name or "model", module))
            seen.add(id(module))
    return clips, towers


class AnchorHooks:
    """The hooks (and the ``encode_text`` wrapper) placing a boosting group in one anchor."""

    def __init__(self, group: PromptGroup):
        self.group = group
        self.hooks: list = []
        self._wrapped: list[nn.Module] = []
        self._text_active = False

    def _values(self, encoder: str, layer: int, like: Tensor) -> Tensor:
        return getattr(self.group, encoder)[layer].to(like.device)

    def attach_tower(self, tower: nn.Module) -> None:
        """``[CLS][patches][boosting]`` at ``ln_pre``; the boosting slice replaced at deep blocks."""
        if self.group.vision is None:
            return
        base = int(tower.positional_embedding.shape[0])
        depth, n = self.group.vision.shape[:2]

        def layer0(_module, args):
            x = args[0]
            if x.shape[-2] != base:
                raise RuntimeError(
                    f"CasPL expected {base} tokens ([CLS] + patches) at ln_pre of the anchor vision tower, got "
                    f"{x.shape[-2]}: this anchor builds its sequence differently; set TRAINER.CASPL.ANCHOR clip"
                )
            return (insert_tokens(x, base, self._values("vision", 0, x), keep_length=False), *args[1:])

        self.hooks.append(tower.ln_pre.register_forward_pre_hook(layer0))
        self._hook_blocks(_blocks(tower), "vision", range(base, base + n), depth, lambda: True)

    def attach_text(self, clip: nn.Module) -> None:
        """``clip.encode_text(ids)`` with ``[SOS][boosting][text . EOS]``."""
        if self.group.text is None:
            return
        depth, n = self.group.text.shape[:2]
        positions = range(1, 1 + n)

        def layer0(_module, _args, output):
            if not self._text_active:
                return output
            return place_tokens(output, positions, self._values("text", 0, output))

        self.hooks.append(clip.token_embedding.register_forward_hook(layer0))
        self._hook_blocks(_blocks(clip), "text", positions, depth, lambda: self._text_active)
        original = clip.encode_text

        @functools.wraps(original)
        def encode_text(token_ids, *args, **kwargs):
            shifted = insert_token_ids(token_ids, 1, n, fill_id=int(token_ids[0, 1]))
            self._text_active = True
            try:
                return original(shifted, *args, **kwargs)
            finally:
                self._text_active = False

        clip.encode_text = encode_text
        self._wrapped.append(clip)

    def _hook_blocks(self, blocks: nn.Sequential, encoder: str, positions, depth: int, active: Callable[[], bool]) -> None:
        def replacer(i: int):
            def hook(_module, args):
                if not active():
                    return None
                x = args[0]
                return (place_tokens(x, positions, self._values(encoder, i, x), seq_first=True), *args[1:])

            return hook

        for i in range(1, depth):
            self.hooks.append(blocks[i].register_forward_pre_hook(replacer(i)))

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()
        for clip in self._wrapped:
            del clip.encode_text  # back to the class's method
        self.hooks, self._wrapped = [], []


def attach_anchor_boosting(handle, group: PromptGroup, trainer=None) -> list[str]:
    """Place ``group`` into every anchor of the host; returns their descriptions (empty: none found)."""
    clips, towers = find_anchors(handle, trainer)
    described = []
    for name, clip in clips:
        hooks = AnchorHooks(group)
        hooks.attach_text(clip)
        hooks.attach_tower(clip.visual)
        described.append(f"{name} (anchor CLIP: text and vision)")
        _keep(handle, hooks)
    for name, tower in towers:
        hooks = AnchorHooks(group)
        hooks.attach_tower(tower)
        described.append(f"{name} (anchor vision tower)")
        _keep(handle, hooks)
    if described:
        logger.info("CasPL: boosted anchors %s", "; ".join(described))
    return described


def _keep(handle, hooks: AnchorHooks) -> None:
    """The anchor hooks live with the host's boosting hooks (``model.caspl_anchor_hooks``)."""
    kept = handle.model.__dict__.setdefault("caspl_anchor_hooks", [])
    kept.append(hooks)


__all__ = ["AnchorHooks", "attach_anchor_boosting", "find_anchors", "is_openai_clip", "is_vision_tower"]
