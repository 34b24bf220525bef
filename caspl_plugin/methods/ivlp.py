"""IVLP: independent deep vision and language prompts (the baseline of MaPLe and PromptSRC).

One adapting group holds ``n_ctx_text`` text tokens down to ``depth_text`` blocks and
``n_ctx_vision`` vision tokens down to ``depth_vision`` blocks, learned independently (no coupling
between the encoders). Text: ``[SOS][ctx][class . EOS]`` at layer 0, the ctx slice replaced at
blocks ``1 .. depth_text-1``; vision: ``[CLS][patches][ctx]`` after the positional embedding, replaced
at blocks ``1 .. depth_vision-1``. Loss: cross-entropy.

Initialisation (the authors' rule): when ``n_ctx_text <= 4`` and ``ctx_init`` is given, text layer 0
is the embedding of the first ``n_ctx_text`` tokens of ``ctx_init`` and *the rest of its words stay
in the prompt as fixed text* (2 tokens of "a photo of a" give ``[SOS][a photo][of a {class}.]``, as
in the authors' code); otherwise every token starts from N(0, 0.02). Depths larger than an encoder's
number of blocks are clamped to it.

In the CasPL cascade the frozen boosting group sits next to these prompts: text
``[SOS][ctx][boosting][class . EOS]``, vision ``[CLS][patches][boosting][ctx]``.

Subclasses (PromptSRC) reuse the construction and change only the loss: the group is made by
:meth:`IVLP.build_prompt_group`, which they may override.

Presets (SGD momentum 0.9, wd 5e-4, cosine, 1 warm-up epoch at 1e-5, ViT-B/16):

================== ============== ========== ====== ====== ===== ==============================================
preset             tokens (T+V)   depth T/V  lr     epochs batch source
================== ============== ========== ====== ====== ===== ==============================================
base2novel         4+4            9/9        0.0025 20     4     PromptSRC ``IVLP/vit_b16_c2_ep20_batch4_4+4ctx``
base2novel_maple   2+2            12/12      0.0035 5      4     MaPLe ``IVLP/vit_b16_c2_ep5_batch4_2+2ctx``
caspl_base2novel   8+8 (random)   12/12      0.0025 20     4     CasPL ships no IVLP config: CasPL_PromptSRC's
                                                                 geometry and schedule without its regularisers
================== ============== ========== ====== ====== ===== ==============================================

The constructor defaults are the ``base2novel`` preset: the PromptSRC repository's only IVLP config
file (its ``train.py`` defaults of 2+2 tokens at depth 9 are used by no shipped config), and the
IVLP numbers PromptSRC reports. All use ``ctx_init = "a photo of a"``.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from torch import Tensor

from ..prompts import PromptedCLIP, PromptGroup, PromptSpec
from .base import PromptModel
from .registry import Preset, register_method

logger = logging.getLogger(__name__)

#: Text prompts are initialised from words only up to this many tokens (the authors' rule).
MAX_INIT_TOKENS = 4

_SCHEDULE = {"warmup_epochs": 1, "warmup_lr": 1e-5}


def split_init_words(clip: PromptedCLIP, ctx_init: str, n_tokens: int) -> tuple[str, str]:
    """Split ``ctx_init`` into the words whose tokens are the first ``n_tokens`` and the words after.

    Raises ``ValueError`` when ``ctx_init`` has fewer tokens, or when the ``n_tokens``-th token
    falls inside a word of several tokens.
    """
    words = str(ctx_init).replace("_", " ").split()
    count = 0
    for k, word in enumerate(words):
        if count == n_tokens:
            return " ".join(words[:k]), " ".join(words[k:])
        count += len(clip.tokenizer.encode(word))
    if count == n_tokens:
        return " ".join(words), ""
    raise ValueError(
        f"ctx_init={ctx_init!r} cannot initialise {n_tokens} text tokens: it has {count} tokens"
        + ("" if count < n_tokens else f" and token {n_tokens} ends inside a word")
        + "; pass ctx_init='' for a random init or change n_ctx_text"
    )


@register_method
class IVLP(PromptModel):
    """Independent vision-language prompting: one adapting group (``adapting``) of deep text and
    vision prompts."""

    method = "ivlp"
    presets = {
        "base2novel": Preset(
            "base2novel", "IVLP base-to-novel as in the PromptSRC repository (vit_b16_c2_ep20_batch4_4+4ctx.yaml)",
            model={"n_ctx_text": 4, "n_ctx_vision": 4, "depth_text": 9, "depth_vision": 9, "ctx_init": "a photo of a"},
            train={"lr": 0.0025, "epochs": 20, "batch_size": 4, **_SCHEDULE},
        ),
        "base2novel_maple": Preset(
            "base2novel_maple", "IVLP base-to-novel as in the MaPLe repository (vit_b16_c2_ep5_batch4_2+2ctx.yaml)",
            model={"n_ctx_text": 2, "n_ctx_vision": 2, "depth_text": 12, "depth_vision": 12, "ctx_init": "a photo of a"},
            train={"lr": 0.0035, "epochs": 5, "batch_size": 4, **_SCHEDULE},
        ),
        "caspl_base2novel": Preset(
            "caspl_base2novel", "CasPL-style phase 2 for IVLP: CasPL_PromptSRC's 8+8 tokens at depth 12 "
            "and schedule (the authors ship no IVLP phase-2 config)",
            model={"n_ctx_text": 8, "n_ctx_vision": 8, "depth_text": 12, "depth_vision": 12, "ctx_init": "a photo of a"},
            train={"lr": 0.0025, "epochs": 20, "batch_size": 4, **_SCHEDULE},
        ),
    }

    def __init__(
        self,
        clip: PromptedCLIP,
        class_names: Sequence[str],
        *,
        n_ctx_text: int = 4,
        n_ctx_vision: int = 4,
        depth_text: int = 9,
        depth_vision: int = 9,
        ctx_init: str = "a photo of a",
        init_std: float = 0.02,
        template: str = "{}.",
        boosting: Optional[PromptGroup] = None,
        learnable_boosting: bool = False,
    ):
        requested = PromptSpec(n_ctx_text, n_ctx_vision, depth_text, depth_vision)
        spec = requested.clamped(clip.text_depth, clip.vision_depth)
        if spec != requested:
            logger.info("%s prompt depths %s clamped to the encoders' blocks: %s", self.method, requested, spec)
        init_words, fixed_words = "", ""
        if ctx_init and 0 < spec.n_text <= MAX_INIT_TOKENS:
            init_words, fixed_words = split_init_words(clip, ctx_init, spec.n_text)
        super().__init__(
            clip, class_names, template=f"{fixed_words} {template}" if fixed_words else template,
            boosting=boosting, learnable_boosting=learnable_boosting,
        )
        self.prompt_spec, self.ctx_init, self.init_std = spec, str(ctx_init or ""), float(init_std)
        self.user_template = template
        self.adapting = self.build_prompt_group(clip.word_embeddings(init_words) if init_words else None)
        self.text_inputs()  # tokenize now: a bad template or class name fails here

    def build_prompt_group(self, text_init: Optional[Tensor]) -> PromptGroup:
        """The method's adapting group (``text_init``: layer-0 text values, or None for random)."""
        return PromptGroup(
            self.method, "adapting", self.prompt_spec, self.clip.text_width, self.clip.vision_width,
            std=self.init_std, text_init=text_init,
        )

    def own_groups(self) -> list[PromptGroup]:
        return [self.adapting]

    def settings(self) -> dict:
        spec = self.prompt_spec
        return {
            "template": self.user_template, "n_ctx_text": spec.n_text, "n_ctx_vision": spec.n_vision,
            "depth_text": spec.depth_text, "depth_vision": spec.depth_vision,
            "ctx_init": self.ctx_init, "init_std": self.init_std,
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, spec={self.prompt_spec}"
