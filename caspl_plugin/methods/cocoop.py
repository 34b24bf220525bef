"""CoCoOp (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022).

CoOp's context shifted per image: a meta-net ``Linear(embed_dim, embed_dim // 16) - ReLU -
Linear(embed_dim // 16, text_width)`` maps the normalised image feature to a bias added to every
context token, so image ``b`` sees the prompts ``[SOS][ctx + meta_net(x_b)][class . EOS]`` for all
classes. Loss: cross-entropy over the per-image logits.

In the CasPL cascade the image feature is the *boosted* one (image encoded with the boosting vision
prompts) and only the adapting context is shifted: ``[SOS][ctx + π(x)][boosting][class . EOS]``.

Cost: a step encodes **B × C text sequences** (batch size times number of classes). The prompted
text tower runs the part they share once per image — ``[SOS]``, the shifted context and the
boosting tokens: the context is passed as one value set per image (``PromptTokens.rows``) — and only
the class names' short suffixes for each class (:mod:`caspl_plugin.prompts.text`); the numbers
equal the full 77-token pass. ``max_text_batch`` bounds the sequences per pass (at least one image's
C sequences): images are encoded in chunks of ``max(1, max_text_batch // C)`` and, when gradients
are on, each chunk is recomputed in the backward pass (activation checkpointing), so the memory kept
for the backward pass is one chunk's, for one more text-tower forward; the result is the same
either way. ``benchmarks/bench_text.py`` measures the text tower and the training step at 10 to
1000 classes.

Class text features depend on the image, so they are never cached per class set
(``image_conditioned_text = True``); :meth:`conditioned_class_features` gives them per image.

Presets (SGD momentum 0.9, wd 5e-4, cosine, 1 warm-up epoch at 1e-5, ViT-B/16):

==================== ===================== ===== ====== ===== =================================================
preset               context               lr    epochs batch source
==================== ===================== ===== ====== ===== =================================================
base2novel           4, "a photo of a"     0.002 10     1     CoCoOp ``vit_b16_c4_ep10_batch1_ctxv1``
cross_dataset        4, "a photo of a"     0.002 10     1     same file, trained on ImageNet
caspl_base2novel     8 random              0.002 10     1     CasPL ``CasPL_CoCoOp/vit_b16_c8_ep10_batch1``
caspl_cross_dataset  4, "a photo of a"     0.002 10     1     CasPL ``CasPL_CoCoOp/vit_b16_c4_ep10_batch1_ctxv1``
                                                              (boosting 4+4 at depth 3)
==================== ===================== ===== ====== ===== =================================================
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..prompts import PromptedCLIP, PromptGroup
from .coop import _SCHEDULE, CoOp
from .registry import Preset, register_method


@register_method
class CoCoOp(CoOp):
    """CoCoOp: CoOp's shared context plus a per-image bias from a meta-net (``meta_net``)."""

    method = "cocoop"
    image_conditioned_text = True
    presets = {
        "base2novel": Preset(
            "base2novel", "CoCoOp base-to-novel (vit_b16_c4_ep10_batch1_ctxv1.yaml)",
            model={"ctx_init": "a photo of a"},
            train={"lr": 0.002, "epochs": 10, "batch_size": 1, **_SCHEDULE},
        ),
        "cross_dataset": Preset(
            "cross_dataset", "CoCoOp trained on ImageNet for cross-dataset/domain transfer (same config)",
            model={"ctx_init": "a photo of a"},
            train={"lr": 0.002, "epochs": 10, "batch_size": 1, **_SCHEDULE},
        ),
        "caspl_base2novel": Preset(
            "caspl_base2novel", "CasPL phase 2 for CoCoOp (CasPL_CoCoOp/vit_b16_c8_ep10_batch1: 8 random tokens)",
            model={"n_ctx": 8, "ctx_init": ""},
            train={"lr": 0.002, "epochs": 10, "batch_size": 1, **_SCHEDULE},
        ),
        "caspl_cross_dataset": Preset(
            "caspl_cross_dataset", "CasPL phase 2 for CoCoOp, domain generalisation (c4_ep10_batch1_ctxv1; boosting 4+4, depth 3)",
            model={"ctx_init": "a photo of a"},
            train={"lr": 0.002, "epochs": 10, "batch_size": 1, **_SCHEDULE},
        ),
    }

    def __init__(
        self,
        clip: PromptedCLIP,
        class_names: Sequence[str],
        *,
        n_ctx: Optional[int] = None,
        ctx_init: str = "a photo of a",
        init_std: float = 0.02,
        max_text_batch: Optional[int] = None,
        template: str = "{}.",
        boosting: Optional[PromptGroup] = None,
        learnable_boosting: bool = False,
    ):
        if max_text_batch is not None and (not isinstance(max_text_batch, int) or max_text_batch < 1):
            raise ValueError(f"max_text_batch must be a positive int or None, got {max_text_batch!r}")
        super().__init__(
            clip, class_names, n_ctx=n_ctx, ctx_init=ctx_init, init_std=init_std, template=template,
            boosting=boosting, learnable_boosting=learnable_boosting,
        )
        self.max_text_batch = max_text_batch
        hidden = max(1, clip.embed_dim // 16)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(clip.embed_dim, hidden)),
            ("relu", nn.ReLU()),
            ("linear2", nn.Linear(hidden, clip.text_width)),
        ]))

    def image_context(self, image_features: Tensor) -> Tensor:
        """Per-image context ``[B, n_ctx, width]``: ``ctx + meta_net(image / |image|)``."""
        bias = self.meta_net(image_features / image_features.norm(dim=-1, keepdim=True))
        return self.ctx + bias.unsqueeze(1)

    def conditioned_class_features(self, image_features: Tensor) -> Tensor:
        """Class text features per image ``[B, C, D]``: ``B × C`` sequences, in one text-tower pass or,
        with ``max_text_batch``, passes of whole images' sequences recomputed in backward (the prompt
        mechanism's chunking, :attr:`~caspl_plugin.prompts.PromptedCLIP.text_chunk`)."""
        contexts = self.image_context(image_features)
        n_images, n_classes = contexts.shape[0], len(self.class_names)
        inputs = self.text_inputs().repeat(n_images)  # row i*C + c: image i, class c
        image_of_row = torch.arange(n_images).repeat_interleave(n_classes)  # on the CPU: the text plan reads it there
        prompts = self.prompts_with_context(contexts, rows=image_of_row)  # one shared prefix per image
        max_rows = None if self.max_text_batch is None else max(1, self.max_text_batch // n_classes) * n_classes
        return self.clip.encode_text(inputs, prompts, max_rows=max_rows).unflatten(0, (n_images, n_classes))

    def encode_classes(self) -> Tensor:
        raise RuntimeError(
            "CoCoOp's class text features depend on the image (image_conditioned_text=True): "
            "use conditioned_class_features(image_features) or call the model on images"
        )

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, C]``, each image against the prompts conditioned on it."""
        image_features = self.encode_image(images)
        return self.clip.logits(image_features, self.conditioned_class_features(image_features))

    def settings(self) -> dict:
        settings = super().settings()
        for fixed in ("csc", "class_position"):
            settings.pop(fixed)
        return {**settings, "max_text_batch": self.max_text_batch}
