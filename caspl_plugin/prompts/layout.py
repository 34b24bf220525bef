"""Where prompt groups sit in the token sequences (CasPL's token order).

Text:   ``[SOS][adapting][boosting][class tokens . EOS][pad]`` — prompt tokens replace placeholder
        embeddings before the positional embedding; the EOT feature is read at its true index, which
        moves right by the number of prompt tokens.
Vision: ``[CLS][patches][boosting][adapting]`` — appended after the positional embedding, before
        ``ln_pre`` (prompt tokens get no positional embedding).

With CoOp's ``class_position`` the boosting tokens stay right before the class name:
``middle`` = ``[SOS][adapting 1st half][boosting][class][adapting 2nd half][. EOS]``,
``front`` = ``[SOS][boosting][class][adapting][. EOS]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import Tensor

ROLES = ("adapting", "boosting")
TEXT_ORDER = ("adapting", "boosting")
VISION_ORDER = ("boosting", "adapting")
CLASS_POSITIONS = ("end", "middle", "front")

#: The word whose token fills prompt slots in the tokenized text (any word works: it is replaced).
PLACEHOLDER = "X"


def text_slot_start(role: str, n_adapting: int) -> int:
    """Index of a group's first text token: adapting right after SOS, boosting after the adapting ones."""
    return 1 if role == "adapting" else 1 + n_adapting


def vision_slot_start(role: str, base_length: int, n_boosting: int) -> int:
    """Index of a group's first vision token: boosting right after the patches, adapting after it."""
    return base_length if role == "boosting" else base_length + n_boosting


def in_text_order(items: Sequence, role=lambda item: item.role) -> list:
    """Stable sort by role in text order (adapting before boosting)."""
    return sorted(items, key=lambda item: TEXT_ORDER.index(role(item)))


def in_vision_order(items: Sequence, role=lambda item: item.role) -> list:
    """Stable sort by role in vision order (boosting before adapting)."""
    return sorted(items, key=lambda item: VISION_ORDER.index(role(item)))


class ContextTooShortError(ValueError):
    """A class prompt longer than the text tower's context: the message says how many tokens the
    context has, how many the prompt tokens and the text take."""

    def __init__(self, class_name: str, needed: int, prompt_tokens: int, text: str, context_length: int):
        self.class_name, self.needed, self.prompt_tokens, self.context_length = class_name, needed, prompt_tokens, context_length
        super().__init__(
            f"Class name {class_name!r} does not fit: the text tower's context has {context_length} tokens, its prompt "
            f"needs {needed} ({prompt_tokens} prompt tokens + {needed - prompt_tokens} for [SOS], the text {text!r} "
            f"and [EOS]); use {needed - context_length} fewer prompt tokens or a shorter class name"
        )


@dataclass(frozen=True)
class Slot:
    """A named run of prompt tokens of one role in the text sequence."""

    name: str
    role: str
    n: int


@dataclass
class TextInputs:
    """Tokenized class prompts with the positions of every prompt slot.

    ``positions[name]`` is ``[n]`` when the slot sits at the same place in every sequence, else
    ``[rows, n]``. ``eot_index`` is where the sequence feature is read. What is derived from the
    inputs (moved, repeated or sliced copies, the text tower's plans) is kept with them
    (:meth:`memo`), so a model that keeps its inputs per class set derives each thing once.
    """

    class_names: tuple[str, ...]
    token_ids: Tensor
    eot_index: Tensor
    slots: tuple[Slot, ...] = ()
    positions: dict[str, Tensor] = field(default_factory=dict)
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def rows(self) -> int:
        return int(self.token_ids.shape[0])

    def memo(self, key, make: Callable[[], object]):
        """``make()``, computed once per ``key`` for these inputs."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def to(self, device) -> "TextInputs":
        device = torch.device(device)
        if self.token_ids.device == device:
            return self
        return self.memo(("to", device), lambda: replace(
            self,
            token_ids=self.token_ids.to(device),
            eot_index=self.eot_index.to(device),
            positions={k: v.to(device) for k, v in self.positions.items()},
        ))

    def slice(self, start: int, stop: int) -> "TextInputs":
        """Sequences ``start .. stop-1``, e.g. one chunk of a large class set."""
        return self.memo(("slice", start, stop), lambda: replace(
            self,
            class_names=self.class_names[start:stop],
            token_ids=self.token_ids[start:stop],
            eot_index=self.eot_index[start:stop],
            positions={k: v if v.dim() == 1 else v[start:stop] for k, v in self.positions.items()},
        ))

    def repeat(self, times: int) -> "TextInputs":
        """The same prompts ``times`` over (rows ``r*S + s``), for per-image prompts (CoCoOp)."""
        return self.memo(("repeat", times), lambda: replace(
            self,
            class_names=self.class_names * times,
            token_ids=self.token_ids.repeat(times, 1),
            eot_index=self.eot_index.repeat(times),
            positions={k: v if v.dim() == 1 else v.repeat(times, 1) for k, v in self.positions.items()},
        ))


def build_text_inputs(
    encode: Callable[[str], list[int]],
    sot_id: int,
    eot_id: int,
    context_length: int,
    class_names: Sequence[str],
    slots: Sequence[Slot] = (),
    template: str = "{}.",
    class_position: str = "end",
) -> TextInputs:
    """Tokenize ``template.format(class_name)`` with prompt slots in CasPL's order.

    ``encode`` is the tokenizer's BPE encoder (no SOS/EOS). Raises ``ValueError`` naming the class
    whose prompt does not fit ``context_length``.
    """
    if "{}" not in template:
        raise ValueError(f"Template {template!r} must contain '{{}}' where the class name goes")
    if class_position not in CLASS_POSITIONS:
        raise ValueError(f"class_position must be one of {CLASS_POSITIONS}, got {class_position!r}")
    slots = [s for s in slots if s.n > 0]
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate prompt slot names: {names}")
    ordered = in_text_order(slots)
    adapting = [s for s in ordered if s.role == "adapting"]
    boosting = [s for s in ordered if s.role == "boosting"]
    if class_position != "end":
        if template != "{}.":
            raise ValueError(f"class_position={class_position!r} needs the template '{{}}.', got {template!r}")
        if len(adapting) > 1:
            raise ValueError(f"class_position={class_position!r} supports one adapting group, got {len(adapting)}")
    placeholder = encode(PLACEHOLDER)
    if len(placeholder) != 1:
        raise ValueError(f"The placeholder {PLACEHOLDER!r} must encode to one token, got {placeholder}")
    x_id = placeholder[0]

    rows_ids, rows_eot, rows_pos = [], [], {s.name: [] for s in slots}
    for class_name in class_names:
        head, tail = template.split("{}", 1)
        pieces: list = []  # ("slot", Slot, start, stop) or ("text", str)
        if class_position == "end":
            pieces += [("slot", s, 0, s.n) for s in ordered]
            pieces.append(("text", template.format(class_name)))
        elif class_position == "middle":
            (a,) = adapting or (Slot("", "adapting", 0),)
            half = a.n // 2
            pieces += [("slot", a, 0, half)] if a.n else []
            pieces += [("slot", s, 0, s.n) for s in boosting]
            pieces += [("text", class_name)]
            pieces += [("slot", a, half, a.n)] if a.n else []
            pieces += [("text", tail)]
        else:  # front
            pieces += [("slot", s, 0, s.n) for s in boosting]
            pieces += [("text", class_name)]
            pieces += [("slot", s, 0, s.n) for s in adapting]
            pieces += [("text", tail)]
        ids, pos = [sot_id], {s.name: [None] * s.n for s in slots}
        for piece in pieces:
            if piece[0] == "slot":
                _, slot, start, stop = piece
                pos[slot.name][start:stop] = range(len(ids), len(ids) + stop - start)
                ids += [x_id] * (stop - start)
            elif piece[1].strip():
                ids += encode(piece[1])
        ids.append(eot_id)
        if len(ids) > context_length:
            raise ContextTooShortError(class_name, len(ids), sum(s.n for s in slots), template.format(class_name),
                                       context_length)
        rows_eot.append(len(ids) - 1)
        rows_ids.append(ids + [0] * (context_length - len(ids)))
        for name, p in pos.items():
            rows_pos[name].append(p)

    positions = {}
    for name, per_row in rows_pos.items():
        tensor = torch.tensor(per_row, dtype=torch.long).reshape(len(class_names), -1)
        same_everywhere = len(per_row) > 0 and bool((tensor == tensor[:1]).all())
        positions[name] = tensor[0] if same_everywhere else tensor
    return TextInputs(
        class_names=tuple(class_names),
        token_ids=torch.tensor(rows_ids, dtype=torch.long).reshape(len(class_names), context_length),
        eot_index=torch.tensor(rows_eot, dtype=torch.long),
        slots=tuple(slots),
        positions=positions,
    )
