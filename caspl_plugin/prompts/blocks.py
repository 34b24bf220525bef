"""How the prompted encoders run open_clip's residual attention blocks.

Two ways, same numbers (tested to 1e-5):

- ``"fused"`` (default): the token stream is kept sequence-first ``[length, rows, width]`` between
  blocks, and a recognised block (open_clip's ``ResidualAttentionBlock`` with a plain
  self-attention ``nn.MultiheadAttention``) is run on its own weights: ``ln_1``, the packed
  in-projection, :func:`torch.nn.functional.scaled_dot_product_attention` (causal masks are passed
  as ``is_causal``, which opens the flash / memory-efficient kernels on GPU), ``out_proj``, ``ls_1``,
  ``ln_2``, the block's ``mlp`` (QuickGELU or GELU, whatever it holds), ``ls_2``. On CPU the linear
  layers of a sequence-first stream land on a faster matmul kernel than the batch-first stream
  ``nn.MultiheadAttention`` transposes internally in training.
- ``"module"``: every block's own ``forward`` on a batch-first stream (open_clip's way).

Any other block (a custom attention, a subclass, cross-attention) — and any block with forward
hooks, so the hooks see what open_clip would give them — runs through its own ``forward``
batch-first, whatever the mode.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BLOCK_MODES = ("fused", "module")


def is_fusable(block: nn.Module) -> bool:
    """Whether ``block`` is exactly open_clip's ``ResidualAttentionBlock`` with a plain packed
    self-attention (so running it on its weights is the same computation)."""
    from open_clip.transformer import ResidualAttentionBlock

    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return False
    attn = block.attn
    return (
        type(attn) is nn.MultiheadAttention
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and attn.bias_v is None
        and not attn.add_zero_attn
        and type(attn.out_proj) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear)
    )


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


def is_causal_mask(mask: Optional[Tensor]) -> bool:
    """True for a float ``[L, L]`` mask of ``-inf`` above the diagonal and ``0`` elsewhere (the text
    tower's), which attention can then take as ``is_causal=True``."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1] or not mask.is_floating_point():
        return False
    upper = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu_(1)
    return bool(torch.isneginf(mask[upper]).all()) and bool((mask[~upper] == 0).all())


class BlockRunner:
    """Runs a stack of blocks in ``mode`` (:data:`BLOCK_MODES`) on a stream in the runner's layout.

    ``seq_first`` tells the layout the stream is kept in between blocks; use :meth:`enter` /
    :meth:`leave` to convert a batch-first tensor into and out of it.
    """

    def __init__(self, mode: str = "fused"):
        if mode not in BLOCK_MODES:
            raise ValueError(f"block mode must be one of {BLOCK_MODES}, got {mode!r}")
        self.mode = mode
        self._causal_key: Optional[tuple] = None
        self._causal: bool = False

    @property
    def seq_first(self) -> bool:
        return self.mode == "fused"

    def enter(self, x: Tensor) -> Tensor:
        """Batch-first ``[rows, length, width]`` -> the runner's layout."""
        return x.transpose(0, 1).contiguous() if self.seq_first else x

    def leave(self, x: Tensor) -> Tensor:
        """The runner's layout -> batch-first (a view)."""
        return x.transpose(0, 1) if self.seq_first else x

    def _mask_is_causal(self, mask: Optional[Tensor]) -> bool:
        if mask is None:
            return False
        key = (mask.data_ptr(), mask._version, tuple(mask.shape), mask.dtype, mask.device)
        if key != self._causal_key:
            self._causal_key, self._causal = key, is_causal_mask(mask)
        return self._causal

    def __call__(self, block: nn.Module, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        if self.mode == "module":
            return block(x, attn_mask=attn_mask)
        if not is_fusable(block) or _has_hooks(block):
            return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
        return self._fused(block, x, attn_mask)

    def _fused(self, block: nn.Module, x: Tensor, attn_mask: Optional[Tensor]) -> Tensor:
        attn = block.attn
        length, rows, width = x.shape
        heads = attn.num_heads
        h = block.ln_1(x)
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(length, rows, 3, heads, width // heads).permute(2, 1, 3, 0, 4).unbind(0)
        causal = self._mask_is_causal(attn_mask)
        mask = None
        if attn_mask is not None and not causal:
            # what the block itself passes to its attention (an additive mask in the stream's dtype),
            # then in the dtype autocast gives q
            mask = attn_mask.to(x.dtype).to(q.dtype)
            if mask.dim() == 3:  # [rows * heads, L, L]
                mask = mask.view(rows, heads, length, length)
        dropout = attn.dropout if attn.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal)
        out = out.permute(2, 0, 1, 3).reshape(length, rows, width)
        x = x + block.ls_1(attn.out_proj(out))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
