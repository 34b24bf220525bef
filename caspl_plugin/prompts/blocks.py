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

from dataclasses import dataclass
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


@dataclass(frozen=True)
class PackedAttention:
    """Who attends to whom in a packed text stream ``[tokens, width]`` (see
    :mod:`caspl_plugin.prompts.text`): first ``groups`` shared prefixes of ``prefix`` tokens (causal
    within each), then buckets of ``(length, rows, groups)``: ``rows`` suffixes of ``length`` tokens,
    each attending to its prefix group's tokens (``groups[row]``, or group 0 when None) and causally
    to its own."""

    groups: int
    prefix: int
    buckets: tuple[tuple[int, int, Optional[Tensor]], ...]
    #: per bucket, its ``[length, prefix + length]`` boolean mask (True: attend) when there is a prefix
    masks: tuple[Optional[Tensor], ...]

    @staticmethod
    def suffix_mask(prefix: int, length: int, device) -> Tensor:
        """``[length, prefix + length]`` boolean mask (True: attend): every prefix token, then causal."""
        mask = torch.ones(length, prefix + length, dtype=torch.bool, device=device)
        return mask.tril_(prefix)


def can_pack(runner: "BlockRunner", blocks) -> bool:
    """Whether ``runner`` can run every block of ``blocks`` on a packed stream (on their own weights)."""
    return runner.mode == "fused" and all(is_fusable(b) and not _has_hooks(b) for b in blocks)


class BlockRunner:
    """Runs a stack of blocks in ``mode`` (:data:`BLOCK_MODES`) on a stream in the runner's layout.

    ``seq_first`` tells the layout the stream is kept in between blocks; use :meth:`enter` /
    :meth:`leave` to convert a batch-first tensor into and out of it.
    """

    def __init__(self, mode: str = "fused"):
        if mode not in BLOCK_MODES:
            raise ValueError(f"block mode must be one of {BLOCK_MODES}, got {mode!r}")
        self.mode = mode
        self._causal: dict[tuple, bool] = {}  # mask identity -> causal

    @property
    def seq_first(self) -> bool:
        return self.mode == "fused"

    def enter(self, x: Tensor) -> Tensor:
        """Batch-first ``[rows, length, width]`` -> the runner's layout."""
        return x.transpose(0, 1).contiguous() if self.seq_first else x

    def leave(self, x: Tensor) -> Tensor:
        """The runner's layout -> batch-first (a view)."""
        return x.transpose(0, 1) if self.seq_first else x

    def mask_is_causal(self, mask: Optional[Tensor]) -> bool:
        """:func:`is_causal_mask`, remembered for the mask last seen (no device sync per call)."""
        if mask is None:
            return False
        key = (mask.data_ptr(), mask._version, tuple(mask.shape), tuple(mask.stride()), mask.dtype, mask.device)
        if key not in self._causal:
            if len(self._causal) >= 16:
                self._causal.clear()
            self._causal[key] = is_causal_mask(mask)
        return self._causal[key]

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
        causal = self.mask_is_causal(attn_mask)
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

    def packed(self, block: nn.Module, x: Tensor, attention: PackedAttention) -> Tensor:
        """One fusable block on a packed stream ``[tokens, width]``: the token-wise layers run on all
        tokens at once, attention per piece (prefixes, then each bucket of suffixes over its prefix)."""
        attn = block.attn
        width = x.shape[-1]
        heads = attn.num_heads
        head_width = width // heads
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        dropout = attn.dropout if attn.training else 0.0

        def split(start: int, rows: int, length: int):
            piece = qkv[start:start + rows * length].view(rows, length, 3, heads, head_width)
            return piece.permute(2, 0, 3, 1, 4).unbind(0)  # q, k, v: [rows, heads, length, head_width]

        def merge(out: Tensor) -> Tensor:
            return out.permute(0, 2, 1, 3).reshape(-1, width)

        outs, start = [], 0
        if attention.prefix:
            q, prefix_k, prefix_v = split(0, attention.groups, attention.prefix)
            outs.append(merge(F.scaled_dot_product_attention(q, prefix_k, prefix_v, dropout_p=dropout, is_causal=True)))
            start = attention.groups * attention.prefix
        for (length, rows, groups), mask in zip(attention.buckets, attention.masks):
            q, k, v = split(start, rows, length)
            if attention.prefix:
                if groups is None:
                    shape = (rows, -1, -1, -1)
                    k = torch.cat([prefix_k.expand(shape), k], dim=2)
                    v = torch.cat([prefix_v.expand(shape), v], dim=2)
                else:
                    k = torch.cat([prefix_k[groups], k], dim=2)
                    v = torch.cat([prefix_v[groups], v], dim=2)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
            else:
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            outs.append(merge(out))
            start += rows * length
        x = x + block.ls_1(attn.out_proj(torch.cat(outs) if len(outs) > 1 else outs[0]))
        return x + block.ls_2(block.mlp(block.ln_2(x)))
