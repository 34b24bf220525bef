"""The one prompt-placement mechanism: prompt groups, their layout, and prompted CLIP encoders.

Every method, the boosting phase and the cascade describe their prompts as :class:`PromptGroup`s
(or :class:`PromptTokens` computed from parameters) and hand them to :class:`PromptedCLIP`; nothing
else slices token sequences. :mod:`.text` runs the text tower at the cost the prompts need
(positions up to the longest EOT, the rows' common prefix once), :mod:`.blocks` the residual blocks.

Imports nothing of the package (torch and open_clip only): every other layer builds on it.
"""
from .encoders import PromptedCLIP
from .group import PromptGroup, PromptSpec, PromptTokens, collect_tokens
from .layout import ROLES, TEXT_ORDER, VISION_ORDER, Slot, TextInputs, build_text_inputs, text_slot_start, vision_slot_start
from .tokens import insert_token_ids, insert_tokens, place_tokens

__all__ = [
    "PromptedCLIP", "PromptGroup", "PromptSpec", "PromptTokens", "collect_tokens",
    "ROLES", "TEXT_ORDER", "VISION_ORDER", "Slot", "TextInputs", "build_text_inputs",
    "text_slot_start", "vision_slot_start", "insert_token_ids", "insert_tokens", "place_tokens",
]
