"""The prompted text tower, run at the cost the prompts need (and no more).

CLIP's text tower is causal and its feature is read at each row's EOT token, so two exact facts cut
most of its work (the numbers equal the 77-token pass up to float rounding):

- **trimmed**: positions after the longest EOT of the rows cannot change any feature, so only
  ``max(eot) + 1`` positions are run;
- **shared**: the rows' longest common prefix — ``[SOS]``, the prompt tokens (the same values in
  every row, at every depth) and the template's head — has the same hidden states in every row at
  every block, so it is run *once* (one row per prefix group) and its keys/values are given to every
  row's suffix (class name, ``.``, EOT). Suffixes are grouped by length (a few buckets) so that a long
  class name does not pad every row. Prompts with per-image values (CoCoOp) make one prefix per
  image (:attr:`PromptTokens.rows` maps rows to value sets).

:data:`TEXT_MODES` names the paths. ``"shared"`` (the default) takes the cheaper of the shared and
the trimmed layout by a cost model (positions run, plus a price per attention call that is higher on
GPUs, where small launches cost more than positions); it falls back to ``"trimmed"`` where the blocks
cannot be run on their weights (``block_mode="module"``, custom or hooked blocks), and every mode
falls back to ``"full"`` for a tower without a causal mask. Everything a path needs beyond the
prompt values (its layout, indices, masks) is planned once per inputs and prompt structure, on the
CPU, and kept with the inputs (:meth:`TextInputs.memo`): a training step plans nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .blocks import BlockRunner, PackedAttention, can_pack
from .group import PromptTokens
from .layout import TextInputs
from .tokens import place_layer, place_tokens

logger = logging.getLogger(__name__)

#: How the text tower runs: shared prefix once + short suffixes (or trimmed, whichever costs less),
#: trimmed to the longest EOT, or all context positions (open_clip's own way; for tests, benchmarks
#: and towers nothing else can drive).
TEXT_MODES = ("shared", "trimmed", "full")
#: At most this many suffix-length buckets per call.
MAX_BUCKETS = 4
#: The cost model's price of one more attention call per block, in positions: what a position costs
#: against a kernel launch (a GPU runs thousands of positions in the time of a few launches).
PIECE_PRICE = {"cpu": 32, "cuda": 8192}
_DEFAULT_PIECE_PRICE = 512


def check_text_mode(mode: str) -> str:
    if mode not in TEXT_MODES:
        raise ValueError(f"text mode must be one of {TEXT_MODES}, got {mode!r}")
    return mode


def text_path(tower: nn.Module, mode: str, blocks: BlockRunner) -> str:
    """The path a text call takes under ``mode`` (before the cost model picks between shared and
    trimmed): the mode itself, or what it falls back to."""
    check_text_mode(mode)
    if mode == "full" or not blocks.mask_is_causal(getattr(tower, "attn_mask", None)):
        return "full"
    if mode == "shared" and can_pack(blocks, tower.transformer.resblocks):
        return "shared"
    return "trimmed"


# ---- plans -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Site:
    """Where one prompt's tokens go in a stream (flat ``index``), and which values they take:
    ``token`` (0..n-1) of value set ``value_set`` (None: values shared by every row)."""

    index: Tensor
    token: Tensor
    value_set: Optional[Tensor]

    def values(self, layer_values: Tensor) -> Tensor:
        if layer_values.dim() == 2:
            return layer_values[self.token]
        return layer_values[self.value_set, self.token]


@dataclass(frozen=True)
class PackedText:
    """Where every row's tokens sit in one packed stream ``[tokens, width]``: first the shared
    prefixes (``groups`` rows of ``prefix`` tokens), then the suffix buckets."""

    prefix: int
    groups: int
    token_ids: Tensor  # [tokens]
    position_ids: Tensor  # [tokens]
    eot: Tensor  # [rows] packed index of each row's EOT
    attention: PackedAttention
    sites: dict  # prompt name -> Site

    @property
    def tokens(self) -> int:
        return int(self.token_ids.shape[0])


@dataclass(frozen=True)
class PaddedText:
    """Rows of ``length`` positions (the context length, or trimmed to the longest EOT)."""

    length: int
    eot: Tensor
    positions: dict  # prompt name -> [n] or [rows, n] on the device

    def tokens(self, rows: int) -> int:
        return rows * self.length


def _signature(prompts: Sequence[PromptTokens]) -> tuple:
    """What a plan depends on besides the inputs: each prompt's name, size and value layout."""
    return tuple(
        (p.name, p.n, p.depth, tuple(v.dim() for v in p.layers),
         None if p.rows is None else tuple(p.rows.tolist()))
        for p in prompts
    )


def plan_text(inputs: TextInputs, prompts: Sequence[PromptTokens], path: str, device) -> "PackedText | PaddedText":
    """The plan of ``path`` for ``inputs`` and the prompts' layout, on ``device`` (kept with the inputs).
    A ``"shared"`` path gives the trimmed plan where sharing would cost more (:data:`PIECE_PRICE`)."""
    device = torch.device(device)
    key = ("text plan", path, _signature(prompts), device)
    return inputs.memo(key, lambda: _make_plan(inputs, prompts, path, device))


def _make_plan(inputs: TextInputs, prompts: Sequence[PromptTokens], path: str, device: torch.device):
    cpu = inputs.to("cpu")
    eot = cpu.eot_index
    if path == "full":
        return _padded(cpu, int(cpu.token_ids.shape[1]), device)
    trimmed_length = int(eot.max()) + 1
    if path == "shared":
        price = PIECE_PRICE.get(device.type, _DEFAULT_PIECE_PRICE)
        packed = _pack(cpu, prompts, price)
        if packed is not None and packed[0] + price * packed[1] < cpu.rows * trimmed_length + price:
            return _packed(cpu, prompts, packed[2], device)
    return _padded(cpu, trimmed_length, device)


def _padded(cpu: TextInputs, length: int, device) -> PaddedText:
    return PaddedText(length, cpu.eot_index.to(device), {k: v.to(device) for k, v in cpu.positions.items()})


def common_prefix(inputs: TextInputs, prompts: Sequence[PromptTokens]) -> int:
    """How many leading positions have the same inputs in every row (or in every row of a prefix
    group, for prompts with :attr:`~PromptTokens.rows`), at most ``min(eot)`` (each row keeps its
    EOT in its suffix)."""
    ids, eot = inputs.token_ids, inputs.eot_index
    limit = int(eot.min())
    differs = (ids[:, :limit] != ids[:1, :limit]).any(0).nonzero()
    prefix = int(differs[0]) if len(differs) else limit
    for p in prompts:
        positions = inputs.positions[p.name]
        if positions.dim() == 2:  # a slot that moves with the class name
            prefix = min(prefix, int(positions.min()))
        if p.rows is None and any(values.dim() == 3 for values in p.layers):  # one value set per row
            prefix = min(prefix, int(positions.min()))
    return prefix


def _prefix_groups(inputs: TextInputs, prompts: Sequence[PromptTokens], prefix: int) -> tuple[int, Tensor]:
    """(number of prefix groups, each row's group): rows whose prefix prompts share value sets."""
    maps = [p.rows.cpu() for p in prompts
            if p.rows is not None and any(v.dim() == 3 for v in p.layers) and int(inputs.positions[p.name].min()) < prefix]
    if not maps:
        return 1, torch.zeros(inputs.rows, dtype=torch.long)
    keys = maps[0].unsqueeze(1) if len(maps) == 1 else torch.stack(maps, dim=1)
    unique, row_group = torch.unique(keys, dim=0, return_inverse=True)
    return int(unique.shape[0]), row_group


def bucket_lengths(lengths: Tensor, price: float, max_buckets: int = MAX_BUCKETS) -> tuple[list[int], int]:
    """(bucket upper lengths ascending, positions they run) for rows' suffix ``lengths``: fewest
    positions plus ``price`` per bucket (dynamic programming over the distinct lengths)."""
    values, counts = torch.unique(lengths, return_counts=True)
    values, counts = values.tolist(), counts.tolist()
    n = len(values)
    below = [0]
    for c in counts:
        below.append(below[-1] + c)
    inf = float("inf")
    best = [[inf] * n for _ in range(max_buckets)]  # best[k][j]: first j+1 lengths in k+1 buckets
    cut = [[-1] * n for _ in range(max_buckets)]
    for j in range(n):
        best[0][j] = below[j + 1] * values[j]
    for k in range(1, max_buckets):
        for j in range(n):
            for i in range(j):
                cost = best[k - 1][i] + (below[j + 1] - below[i + 1]) * values[j]
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(max_buckets), key=lambda k: best[k][n - 1] + k * price)
    tokens = int(best[k][n - 1])
    bounds, j = [], n - 1
    while k >= 0 and j >= 0:
        bounds.append(values[j])
        j, k = cut[k][j], k - 1
    return sorted(bounds), tokens


def _pack(cpu: TextInputs, prompts, price: float):
    """(positions per block, attention calls per block, layout) of the shared layout; None when
    nothing is shared."""
    prefix = common_prefix(cpu, prompts)
    if not prefix:
        return None
    groups, row_group = _prefix_groups(cpu, prompts, prefix)
    if groups >= cpu.rows:
        return None
    bounds, suffix_tokens = bucket_lengths(cpu.eot_index + 1 - prefix, price)
    return groups * prefix + suffix_tokens, 1 + len(bounds), (prefix, groups, row_group, bounds)


def _packed(cpu: TextInputs, prompts, layout, device) -> PackedText:
    prefix, groups, row_group, bounds = layout
    ids, eot, rows = cpu.token_ids, cpu.eot_index, cpu.rows
    lengths = eot + 1 - prefix
    first_rows = torch.full((groups,), rows, dtype=torch.long).scatter_reduce(0, row_group, torch.arange(rows), reduce="amin")
    token_ids = [ids[first_rows, :prefix].reshape(-1)]
    position_ids = [torch.arange(prefix).repeat(groups)]
    row_start = torch.empty(rows, dtype=torch.long)
    buckets, masks, offset, lower = [], [], groups * prefix, 0
    order = torch.argsort(lengths, stable=True)
    sorted_lengths = lengths[order]
    for bound in bounds:
        chosen = order[(sorted_lengths > lower) & (sorted_lengths <= bound)]
        lower = bound
        span = torch.arange(bound)
        token_ids.append(ids[chosen.unsqueeze(1), prefix + span].reshape(-1))
        position_ids.append((prefix + span).repeat(len(chosen)))
        row_start[chosen] = offset + torch.arange(len(chosen)) * bound
        buckets.append((bound, len(chosen), row_group[chosen].to(device) if groups > 1 else None))
        masks.append(PackedAttention.suffix_mask(prefix, bound, device))
        offset += len(chosen) * bound
    sites = {p.name: _site(cpu.positions[p.name], p, prefix, groups, first_rows, row_start, device) for p in prompts}
    return PackedText(
        prefix=prefix, groups=groups,
        token_ids=torch.cat(token_ids).to(device), position_ids=torch.cat(position_ids).to(device),
        eot=(row_start + eot - prefix).to(device),
        attention=PackedAttention(groups, prefix, tuple(buckets), tuple(masks)),
        sites=sites,
    )


def _site(positions: Tensor, prompt: PromptTokens, prefix: int, groups: int, first_rows: Tensor, row_start: Tensor,
          device) -> Site:
    """The packed indices of a prompt's sequence ``positions`` (``[n]`` for every row, or ``[rows, n]``):
    a prefix token once per prefix group, a suffix token once per row."""
    rows, n = row_start.shape[0], positions.shape[-1]
    token = torch.arange(n)
    if positions.dim() == 2:
        index = (row_start.unsqueeze(1) + positions - prefix).reshape(-1)
        source_row, source_token = torch.arange(rows).repeat_interleave(n), token.repeat(rows)
    else:
        in_prefix = positions < prefix
        prefix_index = (torch.arange(groups) * prefix).unsqueeze(1) + positions[in_prefix]
        suffix_index = row_start.unsqueeze(1) + (positions[~in_prefix] - prefix)
        index = torch.cat([prefix_index.reshape(-1), suffix_index.reshape(-1)])
        source_row = torch.cat([first_rows.repeat_interleave(int(in_prefix.sum())),
                                torch.arange(rows).repeat_interleave(int((~in_prefix).sum()))])
        source_token = torch.cat([token[in_prefix].repeat(groups), token[~in_prefix].repeat(rows)])
    value_set = None
    if any(v.dim() == 3 for v in prompt.layers):
        value_set = (prompt.rows.cpu()[source_row] if prompt.rows is not None else source_row).to(device)
    return Site(index.to(device), source_token.to(device), value_set)


# ---- running the tower ---------------------------------------------------------------------------
def check_rows(prompt: PromptTokens, rows: int) -> None:
    """Prompt values that fit a batch of ``rows`` sequences (one set per row, or a map to value sets)."""
    for layer, values in enumerate(prompt.layers):
        if values.dim() == 3 and prompt.rows is None and values.shape[0] != rows:
            raise ValueError(
                f"Prompt {prompt.name!r} layer {layer} has values for {values.shape[0]} sequences, "
                f"but the batch has {rows}"
            )
    if prompt.rows is not None and tuple(prompt.rows.shape) != (rows,):
        raise ValueError(f"Prompt {prompt.name!r} maps {tuple(prompt.rows.shape)} rows to value sets, but the batch has {rows}")


def encode_text(
    tower: nn.Module,
    inputs: TextInputs,
    prompts: Sequence[PromptTokens] = (),
    *,
    blocks: Optional[BlockRunner] = None,
    mode: str = "shared",
    max_rows: Optional[int] = None,
) -> Tensor:
    """Text features ``[rows, embed_dim]`` (not normalised) of ``inputs`` with ``prompts`` placed,
    from an open_clip text tower: a ``CLIP`` with its built-in text side or a ``TextTransformer``
    (they name their parts alike).

    ``max_rows`` runs at most that many sequences per pass; with gradients on, each pass is
    recomputed in the backward pass (activation checkpointing), so the memory kept for backward is
    one pass's: the same numbers for one more forward of the tower.
    """
    blocks = blocks or BlockRunner("fused")
    prompts = [p for p in prompts if p.n > 0]
    for p in prompts:
        check_rows(p, inputs.rows)
    if max_rows is not None:
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows must be a positive int or None, got {max_rows!r}")
        if inputs.rows > max_rows:
            return _encode_in_chunks(tower, inputs, prompts, blocks, mode, max_rows)
    device = tower.positional_embedding.device
    plan = plan_text(inputs, prompts, text_path(tower, mode, blocks), device)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("text tower: %s path (%s mode), %d rows", describe_plan(plan, inputs.rows), mode, inputs.rows)
    if isinstance(plan, PackedText):
        x = _run_packed(tower, plan, prompts, blocks)
    else:
        x = _run_padded(tower, inputs.to(device), plan, prompts, blocks)
    x = tower.ln_final(x)
    projection = tower.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def describe_plan(plan, rows: int) -> str:
    """One line on a plan: its path and the positions one block runs."""
    if isinstance(plan, PackedText):
        return (f"shared (prefix {plan.prefix} x {plan.groups}, {len(plan.attention.buckets)} suffix bucket(s), "
                f"{plan.tokens} positions per block)")
    return f"rows of {plan.length} positions ({plan.tokens(rows)} positions per block)"


def _encode_in_chunks(tower, inputs: TextInputs, prompts, blocks, mode: str, max_rows: int) -> Tensor:
    recompute = torch.is_grad_enabled()
    parts = []
    for start in range(0, inputs.rows, max_rows):
        stop = min(start + max_rows, inputs.rows)
        chunk, chunk_prompts = inputs.slice(start, stop), [p.slice(start, stop) for p in prompts]

        def run(chunk=chunk, chunk_prompts=chunk_prompts):
            return encode_text(tower, chunk, chunk_prompts, blocks=blocks, mode=mode)

        parts.append(checkpoint(run, use_reentrant=False) if recompute else run())
    return torch.cat(parts)


def _place(x: Tensor, layer: int, prompts: Sequence[PromptTokens], sites: dict) -> Tensor:
    """A packed stream with every prompt deeper than ``layer`` written at its sites."""
    active = [p for p in prompts if p.depth > layer]
    if not active:
        return x
    index = [sites[p.name].index for p in active]
    values = [sites[p.name].values(p.layers[layer]) for p in active]
    if len(active) > 1:
        index, values = [torch.cat(index)], [torch.cat(values)]
    return place_tokens(x.unsqueeze(0), index[0], values[0].to(x.dtype)).squeeze(0)


def _run_packed(tower: nn.Module, plan: PackedText, prompts: Sequence[PromptTokens], blocks: BlockRunner) -> Tensor:
    """The EOT tokens' final hidden states ``[rows, width]`` from the packed stream."""
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(plan.token_ids).to(cast_dtype)
    x = _place(x, 0, prompts, plan.sites)
    x = x + tower.positional_embedding.to(cast_dtype)[plan.position_ids]
    for i, block in enumerate(tower.transformer.resblocks):
        if i > 0:
            x = _place(x, i, prompts, plan.sites)
        x = blocks.packed(block, x, plan.attention)
    return x[plan.eot]


def _run_padded(tower: nn.Module, inputs: TextInputs, plan: PaddedText, prompts: Sequence[PromptTokens],
                blocks: BlockRunner) -> Tensor:
    """The EOT tokens' final hidden states ``[rows, width]`` from ``[rows, length]`` sequences: all
    context positions, or up to the longest EOT."""
    cast_dtype = tower.transformer.get_cast_dtype()
    length = plan.length
    x = tower.token_embedding(inputs.token_ids[:, :length]).to(cast_dtype)
    x = place_layer(x, 0, prompts, plan.positions)
    x = x + tower.positional_embedding[:length].to(cast_dtype)
    mask = tower.attn_mask
    if mask is not None:
        mask = mask[:length, :length]
    x = blocks.enter(x)
    for i, block in enumerate(tower.transformer.resblocks):
        if i > 0:
            x = place_layer(x, i, prompts, plan.positions, seq_first=blocks.seq_first)
        x = blocks(block, x, mask)
    x = blocks.leave(x)
    return x[torch.arange(x.shape[0], device=x.device), plan.eot]


# ---- towers without prompts (the teacher) ---------------------------------------------------------
def text_tower_of(model: nn.Module) -> Optional[nn.Module]:
    """The module holding an open_clip model's text parts (the ``CLIP`` itself, or the
    ``TextTransformer`` of a text-only or custom-text model) when this module can run it, else None
    (HF text towers, class tokens, padding masks, other pooling)."""
    tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    if tower is None or not all(hasattr(tower, part) for part in parts):
        return None
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        return None
    if not getattr(tower.transformer, "batch_first", True) or not hasattr(tower.transformer, "resblocks"):
        return None
    if _pool_type(tower) not in ("argmax", "eos"):
        return None
    return tower


def _pool_type(tower: nn.Module) -> str:
    return getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))


def encode_token_ids(model: nn.Module, token_ids: Tensor, *, mode: str = "shared") -> Tensor:
    """``model.encode_text(token_ids)`` (not normalised) for an open_clip model's tokenized texts,
    run on the path ``mode`` allows (e.g. a teacher's class prompts: the template's head once)."""
    tower = text_tower_of(model)
    if tower is None:
        return model.encode_text(token_ids)
    if _pool_type(tower) == "eos":
        eos = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        if eos is None:
            return model.encode_text(token_ids)
        eot = (token_ids == eos).int().argmax(dim=-1)
    else:
        eot = token_ids.argmax(dim=-1)
    inputs = TextInputs(class_names=("",) * token_ids.shape[0], token_ids=token_ids, eot_index=eot)
    return encode_text(tower, inputs, mode=mode)
