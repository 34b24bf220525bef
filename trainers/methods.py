"""The method trainers: each is its config-to-constructor mapping, nothing more.

Config nodes use the reference implementations' keys (``TRAINER.COOP.N_CTX`` ...), so their YAML
files work unchanged. A prompt depth of 0 means layer-0 prompts only, as in the anchors.
"""
from __future__ import annotations

import logging

from .base import method_trainer

logger = logging.getLogger(__name__)


def _ctx(node) -> dict:
    """CoOp's rule: initialisation words fix the context length (``N_CTX`` is then ignored)."""
    words = str(node.CTX_INIT or "").strip()
    if words:
        return {"ctx_init": words, "n_ctx": None}
    return {"ctx_init": "", "n_ctx": int(node.N_CTX)}


def _zeroshot(cfg, node):
    from caspl_plugin.data.catalog import template_for

    return {"template": node.TEMPLATE or template_for(cfg.DATASET.NAME, "a photo of a {}.")}


def _coop(cfg, node):
    return {**_ctx(node), "csc": bool(node.CSC), "class_position": node.CLASS_TOKEN_POSITION}


def _cocoop(cfg, node):
    return _ctx(node)


def _ivlp(cfg, node):
    return {
        "n_ctx_text": int(node.N_CTX_TEXT), "n_ctx_vision": int(node.N_CTX_VISION),
        "depth_text": max(int(node.PROMPT_DEPTH_TEXT), 1), "depth_vision": max(int(node.PROMPT_DEPTH_VISION), 1),
        "ctx_init": node.CTX_INIT,
    }


def _maple(cfg, node):
    return {"n_ctx": int(node.N_CTX), "depth": max(int(node.PROMPT_DEPTH), 1), "ctx_init": node.CTX_INIT}


def _promptsrc(cfg, node):
    return {
        **_ivlp(cfg, node),
        "text_loss_weight": float(node.TEXT_LOSS_WEIGHT), "image_loss_weight": float(node.IMAGE_LOSS_WEIGHT),
        "gpa_mean": float(node.GPA_MEAN), "gpa_std": float(node.GPA_STD),
        "anchor": cfg.TRAINER.CASPL.ANCHOR,
    }


ZeroshotCLIP = method_trainer("ZeroshotCLIP", "zeroshot", "ZEROSHOTCLIP", _zeroshot)
CoOp = method_trainer("CoOp", "coop", "COOP", _coop)
CoCoOp = method_trainer("CoCoOp", "cocoop", "COCOOP", _cocoop)
IVLP = method_trainer("IVLP", "ivlp", "IVLP", _ivlp)
MaPLe = method_trainer("MaPLe", "maple", "MAPLE", _maple)
PromptSRC = method_trainer("PromptSRC", "promptsrc", "PROMPTSRC", _promptsrc)

METHOD_TRAINERS = [ZeroshotCLIP, CoOp, CoCoOp, IVLP, MaPLe, PromptSRC]
