"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023) on the prompt mechanism.

Text prompts are learned; vision prompts are *computed* from them, layer by layer, through linear
projections (``text_width -> vision_width``, both read from the CLIP):

- layer 0: text context ``ctx [n, text_width]`` (init from ``ctx_init`` when ``n <= 4``, else
  N(0, 0.02)); vision prompts ``proj(ctx)``;
- blocks ``1 .. depth-1``: compound text prompts ``[n, text_width]`` (N(0, 0.02)); vision prompts
  ``compound_prompt_projections[i](compound_prompts_text[i])``.

Both are :class:`~caspl_plugin.prompts.PromptTokens` of role ``"adapting"``, placed by the mechanism:
text ``[SOS][maple][boosting]...``, vision ``[CLS][patches][boosting][maple]``. With ``n`` below
the number of ``ctx_init`` tokens the remaining words stay as fixed words before the class name,
as in the reference (``n = 2``: learnable "a photo" then fixed "of a {class}."). The authors' CasPL
code places those fixed words *between* the MaPLe and boosting tokens and carries their hidden
states through the deep layers (its ``N == 2`` special case); that layout is not reproduced: here
the boosting tokens follow the MaPLe tokens directly and the fixed words follow the boosting tokens.
The compound projections start as copies of one randomly initialised layer, as in the reference.

Presets (SGD momentum 0.9, wd 5e-4, cosine, 1 warm-up epoch at 1e-5):

==========================  =====  =====  ======  ======  =====  ===============================
preset                      n_ctx  depth  lr      epochs  batch  source
==========================  =====  =====  ======  ======  =====  ===============================
``base2novel``              2      9      0.0035  5       4      MaPLe ``vit_b16_c2_ep5_batch4_2ctx``
``cross_dataset``           2      3      0.0026  2       4      MaPLe ``..._2ctx_cross_datasets``
``caspl_base2novel``        8      12     0.0035  5       4      CasPL ``vit_b16_c8_ep5_batch4_8ctx_l12``
``caspl_cross_dataset``     8      12     0.0026  2       4      CasPL ``..._8ctx_cross_datasets_l12``
==========================  =====  =====  ======  ======  =====  ===============================

(PromptSRC's copy of the MaPLe base-to-novel config says 2 epochs; the MaPLe repository's says 5.
The CasPL cross-dataset file is named ``ep5`` but sets 2 epochs. With 8 tokens the context is
random, ``ctx_init`` is unused.)
"""
from __future__ import annotations

import copy
import logging
from typing import Optional, Sequence

import torch
from torch import nn

from ..prompts import PromptedCLIP, PromptGroup, PromptTokens, Slot
from .base import PromptModel
from .ivlp import MAX_INIT_TOKENS, split_init_words
from .registry import Preset, register_method

logger = logging.getLogger(__name__)

_TRAIN = {"momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 1, "warmup_lr": 1e-5}


@register_method
class MaPLe(PromptModel):
    """MaPLe: deep text prompts coupled to deep vision prompts by per-layer projections.

    Args:
        clip: the frozen prompted CLIP.
        class_names: class names (``_`` becomes a space).
        n_ctx: prompt tokens per layer in each encoder.
        depth: layers with prompts (layer 0 plus blocks ``1 .. depth-1``); limited to the CLIP's
            number of blocks.
        ctx_init: words for the layer-0 text context when ``n_ctx <= 4`` ("" for random); words
            beyond the first ``n_ctx`` tokens stay as fixed text before ``template``.
        init_std: std of the random prompt initialisation.
        template: the class text after the prompt tokens.
        boosting, learnable_boosting: the CasPL boosting group (see :class:`PromptModel`).
    """

    method = "maple"
    prompt_name = "maple"
    presets = {
        "base2novel": Preset(
            "base2novel", "MaPLe base-to-novel: 2 coupled tokens, depth 9 (MaPLe repo config)",
            model={"n_ctx": 2, "depth": 9, "ctx_init": "a photo of a"},
            train={"lr": 0.0035, "epochs": 5, "batch_size": 4, **_TRAIN},
        ),
        "cross_dataset": Preset(
            "cross_dataset", "MaPLe cross-dataset / domain generalisation: 2 tokens, depth 3",
            model={"n_ctx": 2, "depth": 3, "ctx_init": "a photo of a"},
            train={"lr": 0.0026, "epochs": 2, "batch_size": 4, **_TRAIN},
        ),
        "caspl_base2novel": Preset(
            "caspl_base2novel", "CasPL phase 2 base-to-novel: 8 random tokens, depth 12",
            model={"n_ctx": 8, "depth": 12, "ctx_init": "a photo of a"},
            train={"lr": 0.0035, "epochs": 5, "batch_size": 4, **_TRAIN},
        ),
        "caspl_cross_dataset": Preset(
            "caspl_cross_dataset", "CasPL phase 2 domain generalisation: 8 random tokens, depth 12",
            model={"n_ctx": 8, "depth": 12, "ctx_init": "a photo of a"},
            train={"lr": 0.0026, "epochs": 2, "batch_size": 4, **_TRAIN},
        ),
    }

    def __init__(
        self,
        clip: PromptedCLIP,
        class_names: Sequence[str],
        *,
        n_ctx: int = 2,
        depth: int = 9,
        ctx_init: str = "a photo of a",
        init_std: float = 0.02,
        template: str = "{}.",
        boosting: Optional[PromptGroup] = None,
        learnable_boosting: bool = False,
    ):
        if not isinstance(n_ctx, int) or n_ctx < 1:
            raise ValueError(f"MaPLe n_ctx must be a positive int, got {n_ctx!r}")
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"MaPLe depth must be a positive int, got {depth!r}")
        usable = min(clip.text_depth, clip.vision_depth)
        if depth > usable:
            logger.info("MaPLe depth %d limited to the CLIP's %d blocks", depth, usable)
            depth = usable
        init_words, fixed_words = "", ""
        if ctx_init and n_ctx <= MAX_INIT_TOKENS:
            init_words, fixed_words = split_init_words(clip, ctx_init, n_ctx)
        super().__init__(
            clip, class_names, template=f"{fixed_words} {template}" if fixed_words else template,
            boosting=boosting, learnable_boosting=learnable_boosting,
        )
        self.n_ctx, self.depth, self.ctx_init, self.init_std = n_ctx, depth, str(ctx_init or ""), float(init_std)
        self.user_template = template
        text_w, vision_w = clip.text_width, clip.vision_width

        def random_tokens():
            return nn.init.normal_(torch.empty(n_ctx, text_w), std=init_std)

        self.ctx = nn.Parameter(clip.word_embeddings(init_words).cpu() if init_words else random_tokens())
        self.proj = nn.Linear(text_w, vision_w)
        self.compound_prompts_text = nn.ParameterList(nn.Parameter(random_tokens()) for _ in range(depth - 1))
        layer = nn.Linear(text_w, vision_w)
        self.compound_prompt_projections = nn.ModuleList(copy.deepcopy(layer) for _ in range(depth - 1))
        self.to(clip.device)
        self.text_inputs()  # tokenize now: a bad template or class name fails here

    def text_slots(self) -> list[Slot]:
        return [Slot(self.prompt_name, "adapting", self.n_ctx)] + super().text_slots()

    def text_prompts(self) -> list[PromptTokens]:
        layers = (self.ctx, *self.compound_prompts_text)
        return [PromptTokens(self.prompt_name, "adapting", layers)] + super().text_prompts()

    def vision_prompts(self) -> list[PromptTokens]:
        deep = (project(p) for project, p in zip(self.compound_prompt_projections, self.compound_prompts_text))
        layers = (self.proj(self.ctx), *deep)
        return [PromptTokens(self.prompt_name, "adapting", layers)] + super().vision_prompts()

    def settings(self) -> dict:
        return {
            "template": self.user_template, "n_ctx": self.n_ctx, "depth": self.depth,
            "ctx_init": self.ctx_init, "init_std": self.init_std,
        }

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, n_ctx={self.n_ctx}, depth={self.depth}"
