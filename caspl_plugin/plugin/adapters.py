"""CLIP adapters: recognise the CLIP inside a built trainer and attach a boosting group to it.

An adapter answers three questions for ``CasPL_<X>``: is this trainer's model mine
(:meth:`ClipAdapter.find`), what is its CLIP's geometry (:meth:`geometry`, checked against the
boosting artifact), and how are the boosting prompts placed in it (:meth:`attach`) — always with the
one prompt-placement mechanism's layout. Third-party adapters come from the
``caspl_clip_adapters`` hook (see :mod:`caspl_plugin.plugin.hookspecs`).
"""
from __future__ import annotations

from typing import Any, Optional

from ..prompts import PromptGroup


class ClipAdapter:
    """Base class of adapters; ``name`` identifies it in messages."""

    name = "adapter"

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
