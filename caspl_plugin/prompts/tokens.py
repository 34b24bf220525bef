"""The two token-sequence operations of the prompt mechanism: *place* (replace a slice) and
*insert* (open a slice, keeping the sequence length). Everything that writes prompt tokens into a
sequence — the prompted open_clip encoders and the adapters for host projects' CLIPs — goes through
these functions.

Sequences are ``[rows, length, width]`` (batch-first) or, with ``seq_first=True``,
``[length, rows, width]`` (OpenAI CLIP's transformer). Values are ``[n, width]`` (shared by every
row) or ``[rows, n, width]``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .group import PromptTokens

Positions = Union[Tensor, range, list]


def _as_index(positions: Positions, device) -> Tensor:
    if isinstance(positions, Tensor):
        return positions.to(device)
    return torch.as_tensor(list(positions), dtype=torch.long, device=device)


def place_tokens(x: Tensor, positions: Positions, values: Tensor, *, seq_first: bool = False) -> Tensor:
    """``x`` with ``values`` written at token ``positions`` of every row (autograd-safe, out of place).

    ``positions`` is ``[n]`` (the same for every row) or ``[rows, n]``.
    """
    if seq_first:
        return place_tokens(x.transpose(0, 1), positions, values).transpose(0, 1)
    positions = _as_index(positions, x.device)
    out = x.clone()
    values = values.to(x.dtype)
    if positions.dim() == 1:
        out[:, positions] = values
    else:
        rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
        out[rows, positions] = values
    return out


def place_layer(x: Tensor, layer: int, prompts: Sequence["PromptTokens"], positions: dict, *,
                seq_first: bool = False) -> Tensor:
    """``x`` with layer ``layer``'s values of every prompt deeper than ``layer`` written at its
    ``positions[name]``: one write when all share their values and positions across rows."""
    active = [p for p in prompts if p.depth > layer]
    if not active:
        return x
    values = [p.per_row(layer) for p in active]
    if all(positions[p.name].dim() == 1 for p in active) and all(v.dim() == 2 for v in values):
        return place_tokens(x, torch.cat([positions[p.name] for p in active]), torch.cat(values), seq_first=seq_first)
    for p, v in zip(active, values):
        x = place_tokens(x, positions[p.name], v, seq_first=seq_first)
    return x


def insert_tokens(x: Tensor, at: int, values: Tensor, *, keep_length: bool = True, seq_first: bool = False) -> Tensor:
    """``x`` with ``values`` inserted before token ``at`` of every row.

    With ``keep_length`` the last ``n`` tokens are dropped so the sequence keeps its length (the
    caller makes sure they are padding, e.g. with :func:`insert_token_ids`). Extra leading
    dimensions of ``x`` (e.g. CoCoOp's ``[images, classes, length, width]``) are kept.
    """
    if seq_first:
        return insert_tokens(x.transpose(0, 1), at, values, keep_length=keep_length).transpose(0, 1)
    n = values.shape[-2]
    if n == 0:
        return x
    values = values.to(x.dtype).expand(*x.shape[:-2], n, x.shape[-1])
    end = x.shape[-2] - n if keep_length else x.shape[-2]
    return torch.cat([x[..., :at, :], values, x[..., at:end, :]], dim=-2)


def insert_token_ids(token_ids: Tensor, at: int, n: int, fill_id: int, pad_id: int = 0) -> Tensor:
    """Token ids ``[rows, length]`` with ``n`` ``fill_id`` placeholders inserted before ``at``,
    keeping the length; raises ``ValueError`` naming the rows whose text would be cut off."""
    if n == 0:
        return token_ids
    cut = rows_cut_off(token_ids, n, pad_id)
    if cut:
        raise ValueError(
            f"{n} more prompt tokens do not fit the context length {token_ids.shape[1]} for row(s) {cut}: "
            "their text would be cut off"
        )
    fill = torch.full((token_ids.shape[0], n), fill_id, dtype=token_ids.dtype, device=token_ids.device)
    return torch.cat([token_ids[:, :at], fill, token_ids[:, at:token_ids.shape[1] - n]], dim=1)


def rows_cut_off(token_ids: Tensor, n: int, pad_id: int = 0) -> list[int]:
    """Rows of token ids ``[rows, length]`` whose text would be cut off by inserting ``n`` tokens
    while keeping the length (their last ``n`` ids are not all ``pad_id``)."""
    if n == 0:
        return []
    dropped = token_ids[:, token_ids.shape[1] - n:]
    return (dropped != pad_id).any(dim=1).nonzero().flatten().tolist()
