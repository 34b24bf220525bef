"""CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022).

A learnable text context replaces the hand-made template: the class prompt is
``[SOS][ctx 1..n][class tokens . EOS]`` (class token position ``"end"``), with ``"middle"``
(``[SOS][ctx 1..n/2][class][ctx n/2+1..n][. EOS]``) and ``"front"`` (``[SOS][class][ctx][. EOS]``)
as options. The context is shared by all classes, or one per class (``csc=True``, "class-specific
context"). It starts from the token embeddings of ``ctx_init`` words, or from N(0, 0.02). Loss:
cross-entropy. No vision prompts.

In the CasPL cascade the frozen boosting tokens sit between the context and the class name
(``[SOS][ctx][boosting][class . EOS]``) and the boosting vision prompts enter the image encoder.

Presets (SGD momentum 0.9, wd 5e-4, cosine, 1 warm-up epoch at 1e-5, ViT-B/16):

================== =========================== ====== ====== ===== ==========================================
preset             context                     lr     epochs batch source
================== =========================== ====== ====== ===== ==========================================
few_shot           16 random, end, shared      0.002  200    32    CoOp ``vit_b16`` (1 shot: 50, 2/4: 100,
                                                                   ImageNet: 50; ``epochs_by_shots``)
base2novel         4, "a photo of a"           0.002  200    32    CoOp ``vit_b16_ctxv1`` (ImageNet: 50)
cross_dataset      4, "a photo of a"           0.002  50     32    CoOp ``vit_b16_ep50_ctxv1`` on ImageNet
caspl_base2novel   8 random                    0.002  50     32    CasPL ``CasPL_CoOp/vit_b16_ep50``, N_CTX 8
================== =========================== ====== ====== ===== ==========================================

CasPL's CoOp domain-generalisation run combines ``N_CTX 8`` with ``CTX_INIT "a photo of a"``, which
overwrites the class tokens in the authors' code; that combination is refused here (see
:func:`resolve_context`) and not shipped as a preset.

Differences from the authors' code: with ``ctx_init`` the context length is the number of *tokens*
of the words (the authors count words, which differs for words of several tokens); with ``csc``
and ``ctx_init`` every class starts from the words (the authors silently drop ``csc`` then).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..prompts import PromptedCLIP, PromptGroup, PromptTokens, Slot
from ..prompts.layout import CLASS_POSITIONS
from .base import PromptModel
from .registry import Preset, register_method

#: CoOp's context length when no initialisation words are given.
DEFAULT_N_CTX = 16
#: The slot (and prompt) name of CoOp's context in the token sequence.
CONTEXT = "ctx"

_SCHEDULE = {"warmup_epochs": 1, "warmup_lr": 1e-5}


def resolve_context(clip: PromptedCLIP, n_ctx: Optional[int], ctx_init: str) -> tuple[int, Optional[Tensor]]:
    """CoOp's rule for the context length and its initial value.

    With ``ctx_init`` words the context is their token embeddings and ``n_ctx`` is their number of
    tokens (``n_ctx`` may be left out, or must agree); without, ``n_ctx`` tokens (default 16) start
    random. Returns ``(n_ctx, initial values [n_ctx, width] or None)``.
    """
    words = " ".join(str(ctx_init or "").replace("_", " ").split())
    if not words:
        n = DEFAULT_N_CTX if n_ctx is None else n_ctx
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        return n, None
    init = clip.word_embeddings(words)
    if n_ctx is not None and n_ctx != init.shape[0]:
        raise ValueError(
            f"n_ctx={n_ctx!r} disagrees with ctx_init={ctx_init!r}, which has {init.shape[0]} tokens: CoOp's "
            f"context is exactly the tokens of its init words. Leave n_ctx unset (or pass n_ctx={init.shape[0]}), "
            f"or pass ctx_init='' for {n_ctx} random tokens."
        )
    return int(init.shape[0]), init


@register_method
class CoOp(PromptModel):
    """CoOp: a learnable text context (``ctx``: ``[n_ctx, width]``, or ``[n_classes, n_ctx, width]``
    with ``csc``) in front of, around or after the class name."""

    method = "coop"
    presets = {
        "few_shot": Preset(
            "few_shot", "CoOp few-shot (vit_b16.yaml): 16 random tokens, class at the end",
            model={"n_ctx": 16, "ctx_init": "", "csc": False, "class_position": "end"},
            train={"lr": 0.002, "epochs": 200, "batch_size": 32, **_SCHEDULE,
                   "epochs_by_shots": {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}, "imagenet_epochs": 50},
        ),
        "base2novel": Preset(
            "base2novel", "CoOp base-to-novel (vit_b16_ctxv1.yaml, as run by the CoCoOp scripts)",
            model={"ctx_init": "a photo of a", "csc": False, "class_position": "end"},
            train={"lr": 0.002, "epochs": 200, "batch_size": 32, **_SCHEDULE, "imagenet_epochs": 50},
        ),
        "cross_dataset": Preset(
            "cross_dataset", "CoOp trained on ImageNet for cross-dataset/domain transfer (vit_b16_ep50_ctxv1.yaml)",
            model={"ctx_init": "a photo of a", "csc": False, "class_position": "end"},
            train={"lr": 0.002, "epochs": 50, "batch_size": 32, **_SCHEDULE},
        ),
        "caspl_base2novel": Preset(
            "caspl_base2novel", "CasPL phase 2 for CoOp (CasPL_CoOp/vit_b16_ep50 with N_CTX 8, random init)",
            model={"n_ctx": 8, "ctx_init": "", "csc": False, "class_position": "end"},
            train={"lr": 0.002, "epochs": 50, "batch_size": 32, **_SCHEDULE},
        ),
    }

    def __init__(
        self,
        clip: PromptedCLIP,
        class_names: Sequence[str],
        *,
        n_ctx: Optional[int] = None,
        ctx_init: str = "",
        csc: bool = False,
        class_position: str = "end",
        init_std: float = 0.02,
        template: str = "{}.",
        boosting: Optional[PromptGroup] = None,
        learnable_boosting: bool = False,
    ):
        if class_position not in CLASS_POSITIONS:
            raise ValueError(f"class_position must be one of {CLASS_POSITIONS}, got {class_position!r}")
        super().__init__(clip, class_names, template=template, boosting=boosting, learnable_boosting=learnable_boosting)
        self.class_position, self.csc = class_position, bool(csc)
        self.ctx_init, self.init_std = str(ctx_init or ""), float(init_std)
        self.n_ctx, init = resolve_context(clip, n_ctx, self.ctx_init)
        shape = (len(self.class_names), self.n_ctx, clip.text_width) if self.csc else (self.n_ctx, clip.text_width)
        ctx = torch.empty(shape)
        nn.init.normal_(ctx, std=self.init_std)
        if init is not None:
            ctx.copy_(init.expand(shape))
        self.ctx = nn.Parameter(ctx)
        self.text_inputs()  # tokenize now: a bad template, position or class name fails here

    def set_class_names(self, class_names: Sequence[str]) -> None:
        ctx = getattr(self, "ctx", None)
        if ctx is not None and self.csc and len(class_names) != ctx.shape[0]:
            raise ValueError(
                f"Class-specific context (csc=True) was learned for {ctx.shape[0]} classes and cannot serve "
                f"{len(class_names)} others; use a shared context (csc=False) to change the class set"
            )
        super().set_class_names(class_names)

    # ---- prompts --------------------------------------------------------------------------
    def text_slots(self) -> list[Slot]:
        return [Slot(CONTEXT, "adapting", self.n_ctx)] + super().text_slots()

    def text_prompts(self) -> list[PromptTokens]:
        return self.prompts_with_context(self.ctx)

    def prompts_with_context(self, context: Tensor, rows: Optional[Tensor] = None) -> list[PromptTokens]:
        """Text prompts with ``context`` (``[n_ctx, w]`` shared, or ``[sets, n_ctx, w]``: one per
        sequence, or the set ``rows[i]`` for sequence ``i``) in CoOp's slot, plus the boosting group's tokens."""
        return [PromptTokens(CONTEXT, "adapting", (context,), rows)] + super().text_prompts()

    def settings(self) -> dict:
        return {
            **super().settings(), "n_ctx": self.n_ctx, "ctx_init": self.ctx_init, "csc": self.csc,
            "class_position": self.class_position, "init_std": self.init_std,
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_ctx={self.n_ctx}, csc={self.csc}, class_position={self.class_position!r}"
