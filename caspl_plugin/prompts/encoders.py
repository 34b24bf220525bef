"""The prompted encoders: open_clip's text and vision towers, driven block by block.

Together with :mod:`caspl_plugin.prompts.tokens` (the slicing primitives) this is the only place
in the project that touches token sequences. It re-runs open_clip's
own submodules (embeddings, ``ln_pre``, each residual block, pooling, projection) in their order and
places prompt tokens between them:

- layer 0: text prompts replace placeholder embeddings before the positional embedding; vision
  prompts are appended after the positional embedding, before ``ln_pre``;
- block ``i >= 1``: every prompt whose depth exceeds ``i`` replaces its slice at the block input.

With no prompts both encoders equal ``CLIP.encode_text`` / ``CLIP.encode_image`` (tested). How the
blocks themselves are run (sequence-first on their own weights, or their own ``forward``) is
:mod:`caspl_plugin.prompts.blocks`; where tokens go does not depend on it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .blocks import BlockRunner
from .group import PromptTokens
from .layout import Slot, TextInputs, build_text_inputs, in_vision_order
from .text import check_rows, check_text_mode, encode_text, text_path
from .tokens import place_layer


class PromptedCLIP(nn.Module):
    """A frozen open_clip ``CLIP`` whose text and image encoders accept prompt tokens.

    The CLIP weights are never trained here: the module keeps the CLIP in eval mode and without
    gradients, whatever ``train()`` is called with. ``block_mode`` is how the residual blocks are
    run (:data:`~caspl_plugin.prompts.blocks.BLOCK_MODES`) and ``text_mode`` which positions of the
    text tower are run (:data:`~caspl_plugin.prompts.text.TEXT_MODES`: the shared prefix once, by
    default); both are settable later and give the same numbers.
    """

    def __init__(self, backbone, block_mode: str = "fused", text_mode: str = "shared"):
        super().__init__()
        model = backbone.model
        self._check_supported(model)
        self.clip = model.eval().requires_grad_(False)
        self.backbone_name = backbone.name
        self.weights_source = str(backbone.weights) if backbone.weights is not None else None
        self.geometry = backbone.describe()
        self.tokenizer = backbone.tokenizer
        self.mean, self.std = tuple(backbone.mean), tuple(backbone.std)
        self.block_mode = block_mode
        self.text_mode = text_mode
        #: at most this many class prompts per text-tower pass, recomputed in the backward pass
        #: (exact; for class sets too large for memory); None: all in one pass
        self.text_chunk: Optional[int] = None

    @property
    def block_mode(self) -> str:
        return self._blocks.mode

    @block_mode.setter
    def block_mode(self, mode: str) -> None:
        self._blocks = BlockRunner(mode)

    @property
    def text_mode(self) -> str:
        return self._text_mode

    @text_mode.setter
    def text_mode(self, mode: str) -> None:
        self._text_mode = check_text_mode(mode)

    @staticmethod
    def _check_supported(model: nn.Module) -> None:
        problems = []
        if not hasattr(model, "token_embedding"):
            problems.append("the text tower is not open_clip's built-in one (CustomTextCLIP/HF text towers)")
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "_embeds") or not hasattr(visual, "conv1"):
            problems.append("the image tower is not open_clip's VisionTransformer")
        else:
            if getattr(visual, "attn_pool", None) is not None:
                problems.append("attention pooling is not supported")
            if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool", False):
                problems.append(f"vision pool type {getattr(visual, 'pool_type', None)!r} (only 'tok')")
            if not isinstance(visual.patch_dropout, nn.Identity):
                problems.append("patch dropout would drop prompt tokens")
            if not getattr(visual.transformer, "batch_first", True):
                problems.append("sequence-first vision transformer")
        if getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos"):
            problems.append(f"text pool type {model.text_pool_type!r}")
        if problems:
            raise ValueError("Unsupported CLIP for prompt placement: " + "; ".join(problems))

    def train(self, mode: bool = True) -> "PromptedCLIP":
        super().train(mode)
        self.clip.eval()
        return self

    # ---- geometry -------------------------------------------------------------------------
    @property
    def text_width(self) -> int:
        return self.geometry["text_width"]

    @property
    def vision_width(self) -> int:
        return self.geometry["vision_width"]

    @property
    def text_depth(self) -> int:
        return self.geometry["text_depth"]

    @property
    def vision_depth(self) -> int:
        return self.geometry["vision_depth"]

    @property
    def embed_dim(self) -> int:
        return self.geometry["embed_dim"]

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale.exp()

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    # ---- text -----------------------------------------------------------------------------
    def text_inputs(
        self,
        class_names: Sequence[str],
        slots: Sequence[Slot] = (),
        template: str = "{}.",
        class_position: str = "end",
    ) -> TextInputs:
        """Tokenize class prompts with placeholder slots for prompt tokens (CasPL order)."""
        tok = self.tokenizer
        return build_text_inputs(
            tok.encode, tok.sot_token_id, tok.eot_token_id, self.geometry["context_length"],
            class_names, slots, template, class_position,
        ).to(self.device)

    @torch.no_grad()
    def word_embeddings(self, text: str, n: Optional[int] = None) -> Tensor:
        """Token embeddings of ``text`` (no SOS/EOS), e.g. to initialise context from "a photo of a"."""
        ids = torch.tensor(self.tokenizer.encode(text), dtype=torch.long, device=self.device)
        if n is not None:
            if len(ids) < n:
                raise ValueError(f"{text!r} has {len(ids)} tokens, fewer than the {n} requested")
            ids = ids[:n]
        return self.clip.token_embedding(ids).float()

    def encode_text(self, inputs: TextInputs, prompts: Sequence[PromptTokens] = (), *,
                    max_rows: Optional[int] = None) -> Tensor:
        """Text features ``[rows, embed_dim]`` (not normalised) of ``inputs`` with ``prompts`` placed,
        computed on the path :attr:`text_mode` selects (:mod:`caspl_plugin.prompts.text`), at most
        ``max_rows`` (or :attr:`text_chunk`) sequences per pass."""
        prompts = [p for p in prompts if p.n > 0]
        self._check_slots(inputs, prompts)
        rows = min((r for r in (max_rows, self.text_chunk) if r is not None), default=None)
        return encode_text(self.clip, inputs.to(self.device), prompts, blocks=self._blocks, mode=self.text_mode,
                           max_rows=rows)

    @property
    def text_path(self) -> str:
        """The path :meth:`encode_text` takes: ``text_mode`` or what it falls back to."""
        return text_path(self.clip, self.text_mode, self._blocks)

    @staticmethod
    def _check_slots(inputs: TextInputs, prompts: Sequence[PromptTokens]) -> None:
        expected = {s.name: (s.role, s.n) for s in inputs.slots}
        given = {p.name: (p.role, p.n) for p in prompts}
        if expected != given:
            raise ValueError(
                f"Text prompts do not match the tokenized slots: inputs were built for {expected}, "
                f"prompts given {given}; rebuild the inputs with text_inputs(..., slots=...)"
            )

    # ---- vision ---------------------------------------------------------------------------
    def encode_image(self, images: Tensor, prompts: Sequence[PromptTokens] = ()) -> Tensor:
        """Image features ``[batch, embed_dim]`` (not normalised) with ``prompts`` appended in vision order."""
        visual = self.clip.visual
        prompts = in_vision_order([p for p in prompts if p.n > 0])
        dtype = visual.conv1.weight.dtype
        x = visual.conv1(images.to(device=self.device, dtype=dtype))
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        batch, base_len = x.shape[0], x.shape[1]
        for p in prompts:
            check_rows(p, batch)
        layer0 = [p.per_row(0).to(x.dtype).expand(batch, -1, -1) for p in prompts]
        x = visual.ln_pre(torch.cat([x, *layer0], dim=1))
        positions, start = {}, base_len
        for p in prompts:
            positions[p.name] = torch.arange(start, start + p.n, device=x.device)
            start += p.n
        run = self._blocks
        x = run.enter(x)
        for i, block in enumerate(visual.transformer.resblocks):
            if i > 0:
                x = place_layer(x, i, prompts, positions, seq_first=run.seq_first)
            x = run(block, x)
        pooled, _ = visual._pool(run.leave(x))
        return pooled @ visual.proj if visual.proj is not None else pooled

    # ---- both -----------------------------------------------------------------------------
    def logits(self, image_features: Tensor, text_features: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """``scale * cos(image, text)``: ``[B, C]`` for shared text, ``[B, C]`` from ``[B, C, D]`` per-image text."""
        scale = self.logit_scale if scale is None else scale
        image = image_features / image_features.norm(dim=-1, keepdim=True)
        text = text_features / text_features.norm(dim=-1, keepdim=True)
        if text.dim() == 3:
            return scale * torch.einsum("bd,bcd->bc", image, text)
        return scale * image @ text.t()
