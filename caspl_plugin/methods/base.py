"""What every prompt-learning model shares: a frozen prompted CLIP, prompt groups, class prompts,
an eval-time class-feature cache and the optional frozen boosting group of the CasPL cascade.

A method subclasses :class:`PromptModel` and states only what differs: its own groups
(:meth:`own_groups`), how it turns them into tokens (:meth:`text_prompts`, :meth:`vision_prompts`,
when not plain parameters) and its loss (:meth:`loss`).
"""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..prompts import PromptedCLIP, PromptGroup, PromptTokens, Slot, TextInputs, collect_tokens
from .registry import register_method


class PromptModel(nn.Module):
    """A classifier over ``class_names`` made of a frozen :class:`PromptedCLIP` and prompt groups.

    ``boosting`` is the CasPL boosting group: frozen (unless ``learnable_boosting``) and placed in
    CasPL's order next to the method's own (adapting) prompts; ``None`` or a zero-token group gives
    exactly the method alone.
    """

    #: name used by registries, artifacts and trainers
    method: ClassVar[str] = "zeroshot"
    #: True when class text features depend on the image (CoCoOp): no per-class-set cache then
    image_conditioned_text: ClassVar[bool] = False

    def __init__(
        self,
        clip: PromptedCLIP,
        class_names: Sequence[str],
        *,
        template: str = "{}.",
        boosting: Optional[PromptGroup] = None,
        learnable_boosting: bool = False,
    ):
        super().__init__()
        self.clip = clip
        self.template = template
        self.class_position = "end"
        if boosting is not None:
            if boosting.role != "boosting":
                raise ValueError(f"The boosting group must have role 'boosting', got {boosting.role!r}")
            boosting.set_learnable(learnable_boosting)
        self.boosting = boosting
        self._class_names: tuple[str, ...] = ()
        self._text_inputs: dict[tuple[str, ...], TextInputs] = {}  # per class set, for the current layout
        self._feature_cache: Optional[tuple[tuple, Tensor]] = None
        self.set_class_names(class_names)

    # ---- classes and prompts ------------------------------------------------------------
    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Switch the class set (e.g. base -> novel, or the batch's domain in multi-domain phase 1);
        each class set's tokenized prompts are built once and kept until the prompt layout changes."""
        names = tuple(str(n).replace("_", " ") for n in class_names)
        if not names:
            raise ValueError("class_names is empty")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"Duplicate class names: {dupes}")
        self._class_names = names
        self.class_set_changed()

    def class_set_changed(self) -> None:
        """Hook: :meth:`set_class_names` switched the class set."""

    def own_groups(self) -> list[PromptGroup]:
        """The method's own (adapting) prompt groups; none for zero-shot CLIP."""
        return []

    def groups(self) -> list[PromptGroup]:
        return self.own_groups() + ([self.boosting] if self.boosting is not None else [])

    def text_prompts(self) -> list[PromptTokens]:
        return collect_tokens(self.groups(), "text")

    def vision_prompts(self) -> list[PromptTokens]:
        return collect_tokens(self.groups(), "vision")

    def text_slots(self) -> list[Slot]:
        return [Slot(g.name, g.role, g.spec.n_text) for g in self.groups() if g.spec.n_text]

    def text_inputs(self) -> TextInputs:
        inputs = self._text_inputs.get(self._class_names)
        if inputs is None or inputs.token_ids.device != self.clip.device:
            inputs = self.clip.text_inputs(self.class_names, self.text_slots(), self.template, self.class_position)
            self._text_inputs[self._class_names] = inputs
        return inputs

    # ---- features -------------------------------------------------------------------------
    def encode_image(self, images: Tensor) -> Tensor:
        return self.clip.encode_image(images, self.vision_prompts())

    def encode_classes(self) -> Tensor:
        """Class text features ``[C, D]`` with the current prompts (no cache)."""
        return self.clip.encode_text(self.text_inputs(), self.text_prompts())

    def _prompt_state(self) -> tuple:
        """Identifies the current prompt values: changes whenever a parameter is updated in place."""
        return tuple((id(p), p._version, p.device) for name, p in self.named_parameters() if not name.startswith("clip."))

    def class_features(self) -> Tensor:
        """Class text features; in eval mode computed once per class set and prompt state."""
        if self.training or torch.is_grad_enabled():
            return self.encode_classes()
        key = (self._class_names, self._prompt_state())
        if self._feature_cache is None or self._feature_cache[0] != key:
            self._feature_cache = (key, self.encode_classes())
        return self._feature_cache[1]

    def train(self, mode: bool = True) -> "PromptModel":
        self._feature_cache = None
        return super().train(mode)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, C]``."""
        return self.clip.logits(self.encode_image(images), self.class_features())

    def loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict]:
        """The method's own training loss (cross-entropy unless a method says otherwise)."""
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        return loss, {"loss": loss.detach(), "acc": (logits.argmax(-1) == labels).float().mean()}

    def attach_boosting(self, group: PromptGroup, learnable: bool = False) -> None:
        """Cascade a boosting group into a built model (frozen unless ``learnable``)."""
        if self.boosting is not None:
            raise ValueError(f"{type(self).__name__} already has a boosting group")
        if group.role != "boosting":
            raise ValueError(f"The boosting group must have role 'boosting', got {group.role!r}")
        group.set_learnable(learnable)
        self.boosting = group.to(self.clip.device)
        self.prompts_changed()

    def prompts_changed(self) -> None:
        """Forget everything derived from the prompt layout (every class set's tokenized prompts)."""
        self._text_inputs = {}
        self._feature_cache = None

    def on_epoch_end(self, epoch: int, max_epoch: int) -> None:
        """Called by every training loop after each epoch (``epoch`` is 0-based)."""

    # ---- bookkeeping ----------------------------------------------------------------------
    def learnable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def learnable_state_dict(self) -> dict[str, Tensor]:
        """Only the trained tensors (what checkpoints and phase-2 artifacts store)."""
        names = {id(p) for p in self.learnable_parameters()}
        return {k: v.detach() for k, v in self.named_parameters() if id(v) in names}

    def training_state(self) -> dict[str, Tensor]:
        """What a resumed run needs besides the learnable tensors and the optimizer (e.g. PromptSRC's
        prompt aggregation), as tensors: every checkpoint (``caspl adapt``, Dassl) stores it."""
        return {}

    def load_training_state(self, state: dict[str, Tensor], max_epoch: int) -> None:
        """Restore :meth:`training_state` into a run of ``max_epoch`` epochs."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no training state, got {sorted(state)[:4]}")

    def settings(self) -> dict:
        """Constructor keyword arguments (JSON values) that rebuild this model: recorded in artifacts,
        so ``type(self)(clip, class_names, **settings)`` gives the same architecture."""
        return {"template": self.template}

    def extra_repr(self) -> str:
        return f"method={self.method!r}, classes={len(self.class_names)}, boosting={self.boosting is not None}"


@register_method
class ZeroShotCLIP(PromptModel):
    """Zero-shot CLIP with a hand-made template (and, in a cascade, the boosting prompts)."""

    method = "zeroshot"

    def __init__(self, clip: PromptedCLIP, class_names: Sequence[str], template: str = "a photo of a {}.", **kwargs):
        super().__init__(clip, class_names, template=template, **kwargs)
