"""CLIP adapters for host projects built on OpenAI's ``clip`` package — CoOp, CoCoOp and the IVLP /
PromptSRC / MaPLe forks — whose trainers stay unmodified.

The host's CoOp-style ``CustomCLIP`` (``prompt_learner``, ``image_encoder``, ``text_encoder``,
``tokenized_prompts``, ``logit_scale``) is recognised by its OpenAI layout, and the boosting group is
placed with hooks in CasPL's token order (:mod:`caspl_plugin.prompts.layout`):

- text, layer 0: a forward hook on ``prompt_learner`` inserts the boosting tokens after the host's
  ``n_ctx`` context tokens, keeping the length: ``[SOS][host ctx][boosting][class . EOS]``. The host's
  ``tokenized_prompts`` are shifted once, at attach time, so its own argmax pooling finds the EOT;
- text, block ``i``: a forward pre-hook on ``text_encoder.transformer.resblocks[i]`` replaces the
  boosting slice (sequence-first; MaPLe's ``[x, prompts, counter]`` block inputs too);
- vision, layer 0: a forward pre-hook on ``image_encoder.ln_pre`` (batch-first there) inserts the
  boosting tokens right after ``[CLS][patches]``, before the host's own appended prompts;
- vision, block ``i``: a forward pre-hook on ``image_encoder.transformer.resblocks[i]``.

The forks replace their own slices themselves (text ``x[1:1+n_ctx]``, vision the last ``n`` tokens);
the boosting slices sit between the two, so both keep working. Modules outside the prompted encoders
(PromptSRC's ``ZS_image_encoder`` and ``fixed_embeddings``) are never touched.

Before the host builds anything, a trainer whose module uses OpenAI's ``clip`` package (``from clip
import clip``: a module with ``_MODELS`` and ``tokenize``) is claimed, and what its config already
shows these adapters cannot serve is refused: a ResNet backbone, a class token not at the end.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional, Sequence

from torch import Tensor, nn

from ..prompts import PromptGroup, insert_token_ids, insert_tokens, place_tokens, text_slot_start, vision_slot_start
from ..prompts.tokens import rows_cut_off
from .adapters import CascadeRefused, ClipAdapter, backbone_geometry

logger = logging.getLogger(__name__)

__all__ = ["BoostingHooks", "OpenAIClipHandle", "OpenAICoOpAdapter", "OpenAIDeepPromptAdapter", "openai_clip_adapters",
           "uses_openai_clip"]

#: attribute of the host's ``CustomCLIP`` holding the attached :class:`BoostingHooks`
ATTACHED = "caspl_boosting"

_MODEL_PARTS = ("prompt_learner", "image_encoder", "text_encoder", "tokenized_prompts", "logit_scale")
_VISION_PARTS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "proj")
_TEXT_PARTS = ("positional_embedding", "ln_final", "text_projection")


def _blocks(encoder: nn.Module) -> Optional[nn.Sequential]:
    blocks = getattr(getattr(encoder, "transformer", None), "resblocks", None)
    return blocks if isinstance(blocks, nn.Sequential) else None


def _custom_clip(trainer) -> Optional[nn.Module]:
    """The trainer's CoOp-style ``CustomCLIP`` around an OpenAI-layout CLIP, or None."""
    model = getattr(trainer, "model", None)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    if not isinstance(model, nn.Module) or not all(hasattr(model, part) for part in _MODEL_PARTS):
        return None
    vision, text = model.image_encoder, model.text_encoder
    if not all(hasattr(vision, part) for part in _VISION_PARTS) or not all(hasattr(text, part) for part in _TEXT_PARTS):
        return None
    if _blocks(vision) is None or _blocks(text) is None or not isinstance(getattr(model.prompt_learner, "n_ctx", None), int):
        return None
    return model


def _is_openai_clip_module(value) -> bool:
    """OpenAI's ``clip.clip`` module or a fork's: ``_MODELS`` (name -> download URL) and ``tokenize``."""
    return isinstance(value, ModuleType) and isinstance(getattr(value, "_MODELS", None), dict) \
        and callable(getattr(value, "tokenize", None))


def _openai_clip_modules(trainer_cls: type):
    """``(host module, its clip module)`` for each module defining ``trainer_cls`` or a host base class of it
    that holds OpenAI's ``clip`` package."""
    for klass in trainer_cls.__mro__:
        module = sys.modules.get(getattr(klass, "__module__", "") or "")
        if module is None or module.__name__.split(".")[0] in ("dassl", "caspl_plugin", "builtins"):
            continue
        for value in vars(module).values():
            if _is_openai_clip_module(value):
                yield module, value
                break


def uses_openai_clip(trainer_cls: type) -> bool:
    """True when a module defining ``trainer_cls`` or one of its host base classes holds OpenAI's ``clip``
    package (``from clip import clip``, as CoOp and its forks write it): decided from the class alone."""
    return next(_openai_clip_modules(trainer_cls), None) is not None


def _deep_prompt_counts(encoder: nn.Module) -> set[int]:
    """Token counts of the deep prompts a fork's blocks place themselves (IVLP ``VPT_shallow``, MaPLe)."""
    counts = set()
    for block in _blocks(encoder):
        if isinstance(getattr(block, "VPT_shallow", None), nn.Parameter):
            counts.add(int(block.VPT_shallow.shape[0]))
        elif isinstance(getattr(block, "compound_prompt_nctx", None), int):
            counts.add(block.compound_prompt_nctx)
    return counts


def _host_depth(model: nn.Module, family: str) -> Optional[tuple[int, int]]:
    """``(text, vision)`` depth of an IVLP/MaPLe fork's own prompts: layer 0 plus the deep blocks."""
    if family == "MaPLe":
        deep = getattr(model.prompt_learner, "compound_prompts_text", None)
        depth = 1 + len(deep) if deep is not None else 1
        return depth, depth
    if family == "IVLP":
        def depth(encoder):
            return 1 + sum(isinstance(getattr(b, "VPT_shallow", None), nn.Parameter) for b in _blocks(encoder))

        return depth(model.text_encoder), depth(model.image_encoder)
    return None


def _class_names(trainer, model) -> list[str]:
    names = getattr(model.prompt_learner, "classnames", None)
    if names is None:
        names = getattr(getattr(getattr(trainer, "dm", None), "dataset", None), "classnames", None)
    return list(names or [])


@dataclass
class OpenAIClipHandle:
    """A host's ``CustomCLIP`` and where its own prompts sit."""

    model: nn.Module
    backbone: str
    family: str  #: "CoOp" (no prompts inside the CLIP), "IVLP" (VPT / VPT_shallow) or "MaPLe"
    n_text: int  #: the host's context tokens right after SOS (``prompt_learner.n_ctx``)
    n_vision: int  #: the host's vision prompts appended after ``[CLS][patches]``
    class_names: Sequence[str] = ()
    #: ``(text, vision)`` depth of the host's own deep prompts; None for CoOp/CoCoOp hosts
    depth: Optional[tuple[int, int]] = None

    @property
    def vision_base_length(self) -> int:
        """``1 + grid**2``: the vision tokens before any prompt."""
        return int(self.model.image_encoder.positional_embedding.shape[0])


def _on_sequence(value, fn: Callable[[Tensor], Tensor]):
    """``fn`` applied to a tensor, or to the first item of a MaPLe-style ``[x, prompts, counter]``."""
    if isinstance(value, (list, tuple)):
        return type(value)([fn(value[0]), *value[1:]])
    return fn(value)


def _input_hook(fn: Callable[[Tensor], Tensor]):
    """A forward pre-hook applying ``fn`` to a module's input sequence."""
    return lambda _module, args: (_on_sequence(args[0], fn), *args[1:])


def _output_hook(fn: Callable[[Tensor], Tensor]):
    """A forward hook applying ``fn`` to a module's output sequence."""
    return lambda _module, _args, output: _on_sequence(output, fn)


class BoostingHooks:
    """The hooks and shifted token ids placing one boosting group in a host's CLIP.

    :meth:`remove` takes them out and restores the host's token ids: the host is as before.
    """

    def __init__(self, handle: OpenAIClipHandle, group: PromptGroup):
        self.handle, self.group = handle, group
        self.hooks: list = []
        self._saved_token_ids: list[tuple[nn.Module, Tensor]] = []

    @property
    def text_start(self) -> int:
        return text_slot_start("boosting", self.handle.n_text)

    @property
    def vision_start(self) -> int:
        n = 0 if self.group.vision is None else self.group.vision.shape[1]
        return vision_slot_start("boosting", self.handle.vision_base_length, n)

    def attach(self) -> "BoostingHooks":
        model = self.handle.model
        if getattr(model, ATTACHED, None) is not None:
            raise RuntimeError(f"{type(model).__name__} already has boosting prompts attached; remove() them first")
        text, vision = self.group.text, self.group.vision
        try:
            if text is not None:
                self._shift_token_ids(text.shape[1])
                self._hook_text_layer0()
                self._hook_blocks(_blocks(model.text_encoder), "text", self.text_start)
            if vision is not None:
                self._hook_vision_layer0()
                self._hook_blocks(_blocks(model.image_encoder), "vision", self.vision_start)
        except Exception:
            self.remove()
            raise
        setattr(model, ATTACHED, self)
        return self

    def remove(self) -> None:
        """Take the hooks out and give the host back its own token ids."""
        for hook in self.hooks:
            hook.remove()
        for owner, token_ids in self._saved_token_ids:
            owner.tokenized_prompts = token_ids
        self.hooks, self._saved_token_ids = [], []
        if getattr(self.handle.model, ATTACHED, None) is self:
            delattr(self.handle.model, ATTACHED)

    def _values(self, encoder: str, layer: int, like: Tensor) -> Tensor:
        """The group's tokens for ``layer`` of ``encoder``, read at call time (follows ``.to()`` and updates),
        on ``like``'s device (a ``DataParallel`` replica's)."""
        return getattr(self.group, encoder)[layer].to(like.device)

    def _hook_text_layer0(self) -> None:
        """The prompt learner's output ``[..., L, W]`` gets the layer-0 tokens, keeping ``L``."""
        at = self.text_start

        def insert(prompts: Tensor) -> Tensor:
            return insert_tokens(prompts, at, self._values("text", 0, prompts))

        self.hooks.append(self.handle.model.prompt_learner.register_forward_hook(_output_hook(insert)))

    def _hook_vision_layer0(self) -> None:
        """``ln_pre``'s batch-first input ``[B, L, W]`` gets the layer-0 tokens before the host's prompts."""
        handle, at = self.handle, self.vision_start
        expected = handle.vision_base_length + handle.n_vision

        def insert(x: Tensor) -> Tensor:
            if x.shape[-2] != expected:
                raise RuntimeError(
                    f"CasPL expected {expected} vision tokens at ln_pre of the {handle.family} host ([CLS] + "
                    f"{handle.vision_base_length - 1} patches + {handle.n_vision} host prompts), got {x.shape[-2]}: "
                    "this vision tower builds its sequence differently; write a ClipAdapter for it"
                )
            return insert_tokens(x, at, self._values("vision", 0, x), keep_length=False)

        self.hooks.append(handle.model.image_encoder.ln_pre.register_forward_pre_hook(_input_hook(insert)))

    def _hook_blocks(self, blocks: nn.Sequential, encoder: str, at: int) -> None:
        """Blocks ``1 .. depth-1``: the boosting slice of the sequence-first input is replaced."""
        depth, n = getattr(self.group, encoder).shape[:2]
        positions = range(at, at + n)

        def replacer(i: int) -> Callable[[Tensor], Tensor]:
            return lambda x: place_tokens(x, positions, self._values(encoder, i, x), seq_first=True)

        for i in range(1, depth):
            self.hooks.append(blocks[i].register_forward_pre_hook(_input_hook(replacer(i))))

    def _shift_token_ids(self, n: int) -> None:
        """Open ``n`` slots in the host's token ids (once; objects shared by several owners stay shared)."""
        model = self.handle.model
        shifted: dict[int, Tensor] = {}
        for owner in (model, model.prompt_learner):
            token_ids = getattr(owner, "tokenized_prompts", None)
            if not isinstance(token_ids, Tensor):
                continue
            if id(token_ids) not in shifted:
                shifted[id(token_ids)] = self._insert_ids(token_ids, n)
            self._saved_token_ids.append((owner, token_ids))
            owner.tokenized_prompts = shifted[id(token_ids)]

    def _insert_ids(self, token_ids: Tensor, n: int) -> Tensor:
        cut = rows_cut_off(token_ids, n)
        if cut:
            names = self.handle.class_names
            named = [repr(names[row]) if len(names) == token_ids.shape[0] else f"row {row}" for row in cut]
            shown = ", ".join(named[:8]) + (f" and {len(named) - 8} more" if len(named) > 8 else "")
            raise ValueError(
                f"CasPL: {n} boosting text tokens do not fit the context length {token_ids.shape[1]} of the "
                f"{self.handle.family} host's prompts (SOS + {self.handle.n_text} context tokens + class name + EOS) "
                f"for class(es) {shown}; use fewer host context tokens or shorter class names"
            )
        # any id below the EOT id works: the host's argmax pooling only looks for the EOT
        return insert_token_ids(token_ids, self.text_start, n, fill_id=int(token_ids[0, 1]))


class _OpenAIClipAdapter(ClipAdapter):
    """Shared by the adapters below; subclasses say which hosts are theirs (:meth:`host_prompts`)."""

    def host_prompts(self, model: nn.Module) -> Optional[tuple[str, int]]:
        """``(family, number of host vision prompts)`` when ``model`` is this adapter's, else None."""
        raise NotImplementedError

    def find(self, trainer) -> Optional[OpenAIClipHandle]:
        model = _custom_clip(trainer)
        found = None if model is None else self.host_prompts(model)
        if found is None:
            return None
        family, n_vision = found
        cfg = getattr(trainer, "cfg", None)
        backbone = str(cfg.MODEL.BACKBONE.NAME) if cfg is not None else type(model.image_encoder).__name__
        return OpenAIClipHandle(model, backbone, family, int(model.prompt_learner.n_ctx), n_vision,
                                _class_names(trainer, model), _host_depth(model, family))

    # ---- before the host builds anything -------------------------------------------------------
    def claim(self, trainer_cls, cfg) -> Optional[bool]:
        """True for hosts whose module uses OpenAI's ``clip`` (their config checks apply); which of these
        adapters serves one, and whether any does, only the built model tells. None for other hosts."""
        return True if uses_openai_clip(trainer_cls) else None

    def check_config(self, trainer_cls, cfg, artifact) -> None:
        name = str(cfg.MODEL.BACKBONE.NAME)
        geometry = backbone_geometry(name)
        if geometry is not None and geometry.get("vision_tower") != "ViT":
            raise CascadeRefused(
                f"MODEL.BACKBONE.NAME {name}: its image encoder is a {geometry['vision_tower']}, and the OpenAI-clip "
                f"adapters place boosting prompts in CLIP's ViT towers only; use the ViT backbone the boosting "
                f"prompts were learned on ({artifact.metadata['student']['backbone']})"
            )
        node_name = trainer_cls.__name__.upper()
        node = cfg.TRAINER.get(node_name)
        position = node.get("CLASS_TOKEN_POSITION") if node is not None and hasattr(node, "get") else None
        if position is not None and position != "end":
            raise CascadeRefused(
                f"TRAINER.{node_name}.CLASS_TOKEN_POSITION is {position!r}: CasPL places the boosting text tokens "
                "right after the host's context tokens ([SOS][context][boosting][class . EOS]), which needs the "
                "class token at the end; set it to 'end'"
            )

    def prompt_depth(self, handle: OpenAIClipHandle) -> Optional[tuple[int, int]]:
        return handle.depth

    def attach_anchor(self, handle: OpenAIClipHandle, group: PromptGroup, trainer=None) -> list[str]:
        from .openai_anchors import attach_anchor_boosting

        return attach_anchor_boosting(handle, group, trainer)

    def geometry(self, handle: OpenAIClipHandle) -> dict:
        vision, text = handle.model.image_encoder, handle.model.text_encoder
        return {
            "backbone": handle.backbone,
            "arch": f"openai-clip {type(vision).__name__}",
            "text_width": int(getattr(text.transformer, "width", text.positional_embedding.shape[-1])),
            "text_depth": len(_blocks(text)),
            "vision_width": int(vision.conv1.out_channels),
            "vision_depth": len(_blocks(vision)),
            "embed_dim": int(vision.proj.shape[-1]),
            "context_length": int(handle.model.tokenized_prompts.shape[-1]),
            "host_prompts": {"family": handle.family, "n_text": handle.n_text, "n_vision": handle.n_vision},
        }

    def attach(self, handle: OpenAIClipHandle, group: PromptGroup, trainer=None) -> BoostingHooks:
        """Place ``group`` with hooks; returns the :class:`BoostingHooks` (also at ``model.caspl_boosting``)."""
        position = getattr(handle.model.prompt_learner, "class_token_position", "end")
        if position != "end":
            raise ValueError(
                f"CasPL supports {handle.family} hosts with the class token at the end only, "
                f"got class_token_position={position!r}; set it to 'end'"
            )
        self.check_host(handle)
        hooks = BoostingHooks(handle, group).attach()
        logger.info(
            "CasPL: boosting text tokens at %s, vision tokens at %s of the %s host (%d host text / %d host vision prompts)",
            hooks.text_start if group.text is not None else "-", hooks.vision_start if group.vision is not None else "-",
            handle.family, handle.n_text, handle.n_vision,
        )
        return hooks

    def check_host(self, handle: OpenAIClipHandle) -> None:
        """Raise when the host's own prompt slices are not where the boosting layout expects them."""


class OpenAICoOpAdapter(_OpenAIClipAdapter):
    """CoOp / CoCoOp hosts: prompts only from the prompt learner, a plain OpenAI CLIP."""

    name = "OpenAI clip, CoOp/CoCoOp layout"

    def host_prompts(self, model):
        has_deep = _deep_prompt_counts(model.text_encoder) or _deep_prompt_counts(model.image_encoder)
        if has_deep or isinstance(getattr(model.image_encoder, "VPT", None), nn.Parameter):
            return None
        return "CoOp", 0


class OpenAIDeepPromptAdapter(_OpenAIClipAdapter):
    """IVLP / PromptSRC / MaPLe forks: the CLIP's blocks and vision tower place the host's own prompts."""

    name = "OpenAI clip fork with deep prompts (IVLP/PromptSRC/MaPLe)"

    def host_prompts(self, model):
        vision_blocks = _blocks(model.image_encoder)
        if any(isinstance(getattr(b, "compound_prompt_nctx", None), int) for b in vision_blocks):
            return "MaPLe", int(model.prompt_learner.n_ctx)  # its shared_ctx is projected from the text ctx
        vpt = getattr(model.image_encoder, "VPT", None)
        if isinstance(vpt, nn.Parameter):
            return "IVLP", int(vpt.shape[0])
        if _deep_prompt_counts(model.text_encoder) or _deep_prompt_counts(model.image_encoder):
            return "IVLP", 0
        return None

    def check_host(self, handle):
        for encoder, expected, what in (
            (handle.model.text_encoder, handle.n_text, "text context tokens (prompt_learner.n_ctx)"),
            (handle.model.image_encoder, handle.n_vision, "layer-0 vision prompts"),
        ):
            counts = _deep_prompt_counts(encoder)
            if counts - {expected}:
                raise ValueError(
                    f"The {handle.family} host's deep prompts hold {sorted(counts)} tokens but its {what} are "
                    f"{expected}: CasPL cannot tell where the host's slice ends; write a ClipAdapter for this model"
                )


def openai_clip_adapters() -> list[ClipAdapter]:
    """The adapters for OpenAI-``clip`` hosts (each recognises only its own kind of host)."""
    return [OpenAIDeepPromptAdapter(), OpenAICoOpAdapter()]
