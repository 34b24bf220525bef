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

Vision-only hosts (VPT: prompts in the image tower, class text features computed once from a fixed
template when the host builds its model) get the vision boosting tokens only: their text side has no
prompt path, and the summary line says the text tokens were not placed.

Zero-shot hosts (CoOp's ``ZeroshotCLIP``: the trainer's ``clip_model`` and the class ``text_features``
it computed once from its dataset template) get the boosting group in ``clip_model`` itself, with the
token primitives of the boosted anchors (:class:`~caspl_plugin.plugin.openai_anchors.AnchorHooks`:
``[SOS][boosting][template . EOS]``, ``[CLS][patches][boosting]``); the class features are recomputed
once — after checking that the host's own features are CLIP's features of ``CUSTOM_TEMPLATES`` (the
host module's, else CoOp's table) for its classes. Hosts whose features are something else (a template
ensemble) get the vision tokens only.

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

import torch
from torch import Tensor, nn

from ..prompts import PromptGroup, insert_token_ids, insert_tokens, place_tokens, text_slot_start, vision_slot_start
from ..prompts.tokens import rows_cut_off
from .adapters import CascadeRefused, ClipAdapter, backbone_geometry
from .openai_anchors import AnchorHooks, is_openai_clip, is_vision_tower

logger = logging.getLogger(__name__)

__all__ = ["BoostingHooks", "OpenAIClipHandle", "OpenAICoOpAdapter", "OpenAIDeepPromptAdapter", "OpenAIVisionPromptAdapter",
           "OpenAIZeroshotAdapter", "ZeroshotHandle", "openai_clip_adapters", "uses_openai_clip"]

#: attribute of the host's ``CustomCLIP`` holding the attached :class:`BoostingHooks`
ATTACHED = "caspl_boosting"

_MODEL_PARTS = ("prompt_learner", "image_encoder", "text_encoder", "tokenized_prompts", "logit_scale")
_VISION_PARTS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "ln_post", "proj")
_TEXT_PARTS = ("positional_embedding", "ln_final", "text_projection")


def _blocks(encoder: nn.Module) -> Optional[nn.Sequential]:
    blocks = getattr(getattr(encoder, "transformer", None), "resblocks", None)
    return blocks if isinstance(blocks, nn.Sequential) else None


def _host_model(trainer) -> Optional[nn.Module]:
    model = getattr(trainer, "model", None)
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model if isinstance(model, nn.Module) else None


def _has_towers(model: nn.Module) -> bool:
    """An OpenAI-layout ViT image tower and text encoder (``image_encoder``, ``text_encoder``)."""
    vision, text = getattr(model, "image_encoder", None), getattr(model, "text_encoder", None)
    if vision is None or text is None:
        return False
    if not all(hasattr(vision, part) for part in _VISION_PARTS) or not all(hasattr(text, part) for part in _TEXT_PARTS):
        return False
    return _blocks(vision) is not None and _blocks(text) is not None


def _custom_clip(trainer) -> Optional[nn.Module]:
    """The trainer's CoOp-style ``CustomCLIP`` around an OpenAI-layout CLIP, or None."""
    model = _host_model(trainer)
    if model is None or not all(hasattr(model, part) for part in _MODEL_PARTS) or not _has_towers(model):
        return None
    if not isinstance(getattr(model.prompt_learner, "n_ctx", None), int):
        return None
    return model


def _vision_prompt_clip(trainer) -> Optional[nn.Module]:
    """The trainer's VPT-style model: an OpenAI-layout CLIP's towers and ``logit_scale``, no prompt learner."""
    model = _host_model(trainer)
    if model is None or hasattr(model, "prompt_learner") or not hasattr(model, "logit_scale") or not _has_towers(model):
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
    """``(text, vision)`` depth of an IVLP/MaPLe/VPT fork's own prompts: layer 0 plus the deep blocks."""
    if family == "MaPLe":
        deep = getattr(model.prompt_learner, "compound_prompts_text", None)
        depth = 1 + len(deep) if deep is not None else 1
        return depth, depth
    if family in ("IVLP", "VPT"):
        def depth(encoder):
            return 1 + sum(isinstance(getattr(b, "VPT_shallow", None), nn.Parameter) for b in _blocks(encoder))

        return depth(model.text_encoder), depth(model.image_encoder)
    return None


def _class_names(trainer, model) -> list[str]:
    names = getattr(getattr(model, "prompt_learner", None), "classnames", None)
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
    #: why the boosting text tokens cannot be placed (a host without a prompted text path, VPT); None: they can
    no_text_path: Optional[str] = None

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
            if text is not None and self.handle.no_text_path is None:
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

    def host_model(self, trainer) -> Optional[nn.Module]:
        """The trainer's model in the layout this adapter reads, or None."""
        return _custom_clip(trainer)

    def find(self, trainer) -> Optional[OpenAIClipHandle]:
        model = self.host_model(trainer)
        found = None if model is None else self.host_prompts(model)
        if found is None:
            return None
        family, n_vision = found
        cfg = getattr(trainer, "cfg", None)
        backbone = str(cfg.MODEL.BACKBONE.NAME) if cfg is not None else type(model.image_encoder).__name__
        learner = getattr(model, "prompt_learner", None)
        return OpenAIClipHandle(model, backbone, family, int(learner.n_ctx) if learner is not None else 0, n_vision,
                                _class_names(trainer, model), _host_depth(model, family), self.no_text_path(model, family))

    def no_text_path(self, model: nn.Module, family: str) -> Optional[str]:
        """Why the boosting text tokens cannot be placed in this host; None when they can."""
        return None

    def unplaced(self, handle: OpenAIClipHandle) -> dict[str, str]:
        return {"text": handle.no_text_path} if handle.no_text_path else {}

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
            "context_length": int(text.positional_embedding.shape[0]),
            "host_prompts": {"family": handle.family, "n_text": handle.n_text, "n_vision": handle.n_vision},
        }

    def attach(self, handle: OpenAIClipHandle, group: PromptGroup, trainer=None) -> BoostingHooks:
        """Place ``group`` with hooks; returns the :class:`BoostingHooks` (also at ``model.caspl_boosting``)."""
        position = getattr(getattr(handle.model, "prompt_learner", None), "class_token_position", "end")
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


class OpenAIVisionPromptAdapter(OpenAIDeepPromptAdapter):
    """VPT hosts: vision prompts in the CLIP's image tower, class text features fixed when the host is built.

    Only the vision boosting tokens are placed: the host computes its class text features once, from a
    hand-made template through CLIP's text encoder, and keeps no prompt learner (nor CLIP's token
    embedding) to put the text tokens into.
    """

    name = "OpenAI clip fork with vision prompts only (VPT)"

    def host_model(self, trainer):
        return _vision_prompt_clip(trainer)

    def host_prompts(self, model):
        if _deep_prompt_counts(model.text_encoder):
            return None  # text prompts inside the text encoder, but no prompt learner: not a layout we know
        vpt = getattr(model.image_encoder, "VPT", None)
        return "VPT", int(vpt.shape[0]) if isinstance(vpt, nn.Parameter) else 0

    def no_text_path(self, model, family):
        return (f"the {family} host's class text features are fixed, computed once from a hand-made template when "
                "it built its model, with no prompt learner to place text tokens in")


@dataclass
class ZeroshotHandle:
    """A zero-shot host: the trainer, its CLIP and the class prompts its ``text_features`` came from."""

    trainer: object
    clip: nn.Module
    backbone: str
    #: the host's class prompts, reproduced and checked against its features; None when they could not be
    token_ids: Optional[Tensor] = None
    no_text_path: Optional[str] = None


class OpenAIZeroshotAdapter(ClipAdapter):
    """CoOp's ``ZeroshotCLIP`` and its copies in the forks: ``trainer.clip_model`` (an OpenAI CLIP) and the
    class ``trainer.text_features`` computed once in ``build_model`` from the dataset's template."""

    name = "OpenAI clip, zero-shot CLIP trainer (ZeroshotCLIP)"

    def find(self, trainer) -> Optional[ZeroshotHandle]:
        clip, features = getattr(trainer, "clip_model", None), getattr(trainer, "text_features", None)
        if _host_model(trainer) is not None or not isinstance(clip, nn.Module) or not is_openai_clip(clip):
            return None
        if not is_vision_tower(clip.visual) or not isinstance(features, Tensor) or features.dim() != 2:
            return None
        cfg = getattr(trainer, "cfg", None)
        backbone = str(cfg.MODEL.BACKBONE.NAME) if cfg is not None else type(clip.visual).__name__
        handle = ZeroshotHandle(trainer, clip, backbone)
        handle.token_ids, handle.no_text_path = self._class_prompts(trainer, clip, features)
        return handle

    @staticmethod
    def _class_prompts(trainer, clip: nn.Module, features: Tensor) -> tuple[Optional[Tensor], Optional[str]]:
        """The token ids of the host's class prompts, or why they cannot be reproduced."""
        from ..data.catalog import template_for

        cfg, names = trainer.cfg, list(getattr(getattr(getattr(trainer, "dm", None), "dataset", None), "classnames", []))
        found = next(_openai_clip_modules(type(trainer)), None)
        templates = getattr(found[0], "CUSTOM_TEMPLATES", None) if found else None
        template = templates.get(cfg.DATASET.NAME) if isinstance(templates, dict) else None
        template = template or template_for(cfg.DATASET.NAME, "")
        if not template or len(names) != features.shape[0]:
            return None, (f"no dataset template for {cfg.DATASET.NAME} to recompute the host's "
                          f"{features.shape[0]} class text features with")
        prompts = [template.format(name.replace("_", " ")) for name in names]
        context = int(clip.positional_embedding.shape[0])
        if found is not None:
            token_ids = found[1].tokenize(prompts, context_length=context)
        else:
            from open_clip.tokenizer import SimpleTokenizer

            token_ids = SimpleTokenizer(context_length=context)(prompts)
        token_ids = token_ids.to(features.device)
        with torch.no_grad():
            ours = clip.encode_text(token_ids).float()
        ours = ours / ours.norm(dim=-1, keepdim=True)
        if ours.shape != features.shape or not torch.allclose(ours, features.float(), atol=1e-3):
            return None, (f"its class text features are not CLIP's features of {template!r} for its classes (a "
                          "template ensemble?), so they cannot be recomputed with the boosting text tokens")
        return token_ids, None

    def geometry(self, handle: ZeroshotHandle) -> dict:
        clip = handle.clip
        return {
            "backbone": handle.backbone,
            "arch": f"openai-clip {type(clip.visual).__name__}",
            "text_width": int(clip.ln_final.weight.shape[0]),
            "text_depth": len(clip.transformer.resblocks),
            "vision_width": int(clip.visual.conv1.out_channels),
            "vision_depth": len(clip.visual.transformer.resblocks),
            "embed_dim": int(clip.text_projection.shape[-1]),
            "context_length": int(clip.positional_embedding.shape[0]),
        }

    def unplaced(self, handle: ZeroshotHandle) -> dict[str, str]:
        return {"text": handle.no_text_path} if handle.no_text_path else {}

    def attach(self, handle: ZeroshotHandle, group: PromptGroup, trainer=None) -> AnchorHooks:
        """The boosting group in the host's CLIP; its class features recomputed with the boosting text tokens."""
        hooks = AnchorHooks(group)
        if handle.token_ids is not None and group.text is not None:
            hooks.attach_text(handle.clip)
            with torch.no_grad():
                features = handle.clip.encode_text(handle.token_ids)
            handle.trainer.text_features = features / features.norm(dim=-1, keepdim=True)
        hooks.attach_tower(handle.clip.visual)
        handle.trainer.caspl_boosting = hooks
        return hooks


def openai_clip_adapters() -> list[ClipAdapter]:
    """The adapters for OpenAI-``clip`` hosts (each recognises only its own kind of host)."""
    return [OpenAIDeepPromptAdapter(), OpenAICoOpAdapter(), OpenAIVisionPromptAdapter(), OpenAIZeroshotAdapter()]
