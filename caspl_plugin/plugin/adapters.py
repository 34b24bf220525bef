"""CLIP adapters: recognise the CLIP inside a built trainer and attach a boosting group to it.

An adapter answers three questions for ``CasPL_<X>``: is this trainer's model mine
(:meth:`ClipAdapter.find`), what is its CLIP's geometry (:meth:`geometry`, checked against the
boosting artifact), and how are the boosting prompts placed in it (:meth:`attach`) — always with the
one prompt-placement mechanism's layout. Third-party adapters come from the
``caspl_clip_adapters`` hook (see :mod:`caspl_plugin.plugin.hookspecs`).

Before the host builds anything (Dassl's ``check_cfg``), an adapter may also say from the trainer
*class* and the config whether the host is its own (:meth:`ClipAdapter.claim`) and refuse what the
config already shows it cannot serve (:meth:`ClipAdapter.check_config`), so that such a refusal costs
no model build.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

from ..prompts import PromptGroup


class CascadeRefused(ValueError):
    """``CasPL_<X>`` cannot work for this trainer or config; the message says why and what to do."""


def backbone_geometry(name: str) -> Optional[dict]:
    """The geometry of the CLIP called ``name`` (Dassl/CoOp or open_clip spelling), read from open_clip's
    model config without building the model; None for a name open_clip does not know.

    Transformer towers get ``Backbone.describe()``'s width and depth keys; an image tower that is not a
    plain ViT (OpenAI's ResNets, timm towers) is described by ``"vision_tower"`` instead.
    """
    import open_clip

    from ..clip import resolve_model_name

    try:
        arch = resolve_model_name(str(name))
    except ValueError:
        return None
    config = open_clip.get_model_config(arch) or {}
    vision, text = config.get("vision_cfg") or {}, config.get("text_cfg") or {}
    geometry: dict = {"backbone": str(name), "arch": arch}
    if isinstance(text.get("width"), int) and isinstance(text.get("layers"), int):
        geometry.update(text_width=text["width"], text_depth=text["layers"])
    if isinstance(vision.get("layers"), int) and isinstance(vision.get("width"), int) and vision.get("patch_size"):
        geometry.update(vision_width=vision["width"], vision_depth=vision["layers"], vision_tower="ViT")
    else:
        geometry["vision_tower"] = "ResNet" if isinstance(vision.get("layers"), (list, tuple)) else "not a plain ViT"
    return geometry


class ClipAdapter:
    """Base class of adapters; ``name`` identifies it in messages."""

    name = "adapter"

    def claim(self, trainer_cls: type, cfg) -> Optional[bool]:
        """Before the host builds anything: True when ``trainer_cls`` is a host of the kind this adapter
        serves (its :meth:`check_config` then applies), False when it surely is not, None (the default)
        when only the built model can tell. The first adapter that does not answer False decides."""
        return None

    def check_config(self, trainer_cls: type, cfg, artifact) -> None:
        """Before the host builds anything, for a trainer this adapter claimed: raise
        :class:`CascadeRefused` for what the config already shows it cannot serve (its backbone, its
        prompt layout, a boosted anchor it does not have)."""

    def unplaced(self, handle) -> dict[str, str]:
        """Encoders of the boosting group this host cannot take, each with the reason (empty: all placed)."""
        return {}

    def find(self, trainer) -> Optional[Any]:
        """A handle on the trainer's CLIP (any object the other methods understand), or None."""
        raise NotImplementedError

    def geometry(self, handle) -> dict:
        """``Backbone.describe()``-style dict: backbone, text/vision width and depth."""
        raise NotImplementedError

    def attach(self, handle, group: PromptGroup, trainer) -> None:
        """Place ``group`` (frozen unless the trainer asked otherwise) into the handle's CLIP."""
        raise NotImplementedError

    def prompt_depth(self, handle) -> Optional[tuple[int, int]]:
        """``(text, vision)`` depth of the host method's own deep prompts (for ``BOOSTING_DEPTH method``);
        None when the method has none (CoOp, CoCoOp): the artifact's depth is kept."""
        return None

    def attach_anchor(self, handle, group: PromptGroup, trainer) -> list[str]:
        """Place ``group`` into the host's frozen anchor CLIP(s) (``TRAINER.CASPL.ANCHOR boosted``);
        returns what was boosted (empty: no anchor found)."""
        return []


class PromptModelAdapter(ClipAdapter):
    """This package's own models (:class:`~caspl_plugin.methods.PromptModel` on open_clip)."""

    name = "caspl PromptModel (open_clip)"

    @staticmethod
    def method_of(trainer_cls: type) -> Optional[type]:
        """The library method a trainer class builds (the plugin's method trainers name it in ``method``
        and read ``TRAINER.<cfg_node>``), or None."""
        from ..methods import get_method

        method = getattr(trainer_cls, "method", None)
        if not (isinstance(method, str) and method and isinstance(getattr(trainer_cls, "cfg_node", None), str)):
            return None
        try:
            return get_method(method)
        except KeyError:
            return None

    def claim(self, trainer_cls, cfg) -> bool:
        return self.method_of(trainer_cls) is not None

    def check_config(self, trainer_cls, cfg, artifact) -> None:
        from ..clip import resolve_model_name

        try:
            resolve_model_name(str(cfg.MODEL.BACKBONE.NAME))
        except ValueError as error:
            raise CascadeRefused(f"MODEL.BACKBONE.NAME: {error}") from None
        method = self.method_of(trainer_cls)
        if cfg.TRAINER.CASPL.ANCHOR == "boosted" and "anchor" not in inspect.signature(method).parameters:
            raise CascadeRefused(
                f"TRAINER.CASPL.ANCHOR boosted: {trainer_cls.__name__}'s method {method.method!r} regularises against no "
                "frozen anchor CLIP (of the plugin's methods only PromptSRC does), so there is nothing to boost; "
                "set TRAINER.CASPL.ANCHOR clip"
            )

    def find(self, trainer):
        from ..methods import PromptModel

        model = getattr(trainer, "model", None)
        return model if isinstance(model, PromptModel) else None

    def geometry(self, handle) -> dict:
        return dict(handle.clip.geometry)

    def attach(self, handle, group: PromptGroup, trainer) -> None:
        handle.attach_boosting(group, learnable=any(p.requires_grad for p in group.parameters()))

    def prompt_depth(self, handle):
        from ..methods.cascade import method_prompt_depth

        return method_prompt_depth(handle)

    def attach_anchor(self, handle, group: PromptGroup, trainer) -> list[str]:
        # the method's own anchor (PromptSRC) follows TRAINER.CASPL.ANCHOR through its constructor
        return [f"{type(handle).__name__}'s own anchor"] if getattr(handle, "anchor", None) == "boosted" else []
