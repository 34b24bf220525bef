"""The plugin's yacs defaults, under ``TRAINER.<NAME>.*`` like the anchors.

Method nodes (``COOP``, ``COCOOP``, ``IVLP``, ``MAPLE``, ``PROMPTSRC``) use the reference
implementations' key names, defaults *and types* (yacs refuses an int<->float change), so their
YAML files and command-line overrides work unchanged — and a host project that defines the same
nodes itself keeps working. The plugin's own nodes:

``TRAINER.CASPL``        the cascade (phase 2): ``BOOSTING`` artifact path, ``LEARNABLE_BOOSTING``
                         (the paper's ablation), ``ANCHOR`` of PromptSRC and of host regularisers
                         (``clip`` = vanilla CLIP, the authors' code | ``boosted``), ``BOOSTING_DEPTH``
                         (``artifact`` | ``method``: the authors' PromptSRC rule) and ``BOOSTING_SEED``
                         (its random fill; -1, the default: the run's SEED; see caspl_plugin.methods.cascade)
``TRAINER.BOOSTDISTILL`` phase 1: boosting geometry, teacher, template, temperature, ``EXPORT`` path,
                         ``TEACHER_CACHE`` (a ``caspl teacher-cache`` folder: train without the teacher's image tower),
                         ``DOMAINS`` (universal boosting prompts: CoOp dataset names and/or domain manifests,
                         one class set and template each) and ``DOMAIN_SAMPLING`` (``size`` | ``even``)
``MODEL.BACKBONE.WEIGHTS`` / ``WEIGHTS_DIR``   where CLIP weights come from (see caspl_plugin.clip)
``MODEL.BACKBONE.TEXT_CHUNK``   at most this many class prompts per text-tower pass, recomputed in the
                         backward pass (exact, less memory; 0 = all classes in one pass)
"""
from __future__ import annotations

from yacs.config import CfgNode as CN

#: where BoostDistill writes the boosting artifact inside its OUTPUT_DIR (and CasPL_* looks by default)
BOOSTING_FILE = "boosting.safetensors"
#: prefix of the cascade trainers: ``CasPL_<X>`` wraps the registered trainer ``X``
CASCADE_PREFIX = "CasPL_"
#: the class attribute of a ``CasPL_<X>`` class that holds ``X``
CASCADE_BASE = "_caspl_base"


def _node(**values) -> CN:
    node = CN()
    for key, value in values.items():
        setattr(node, key, value)
    return node


def method_defaults() -> dict[str, CN]:
    """``TRAINER.<NODE>`` defaults of the five methods (the reference implementations' own)."""
    return {
        "COOP": _node(N_CTX=16, CSC=False, CTX_INIT="", PREC="fp16", CLASS_TOKEN_POSITION="end"),
        "COCOOP": _node(N_CTX=16, CTX_INIT="", PREC="fp16"),
        "IVLP": _node(N_CTX_VISION=2, N_CTX_TEXT=2, CTX_INIT="a photo of a", PREC="fp16",
                      PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9),
        "MAPLE": _node(N_CTX=2, CTX_INIT="a photo of a", PREC="fp16", PROMPT_DEPTH=9),
        "PROMPTSRC": _node(N_CTX_VISION=4, N_CTX_TEXT=4, CTX_INIT="a photo of a", PREC="fp16",
                           PROMPT_DEPTH_VISION=9, PROMPT_DEPTH_TEXT=9, TEXT_LOSS_WEIGHT=25,
                           IMAGE_LOSS_WEIGHT=10, GPA_MEAN=15, GPA_STD=1),
    }


def plugin_defaults() -> dict[str, CN]:
    """``TRAINER.<NODE>`` defaults of the plugin's own trainers."""
    return {
        "CASPL": _node(BOOSTING="", LEARNABLE_BOOSTING=False, ANCHOR="clip", BOOSTING_DEPTH="artifact", BOOSTING_SEED=-1),
        "BOOSTDISTILL": _node(
            N_CTX_TEXT=8, N_CTX_VISION=8, PROMPT_DEPTH_TEXT=12, PROMPT_DEPTH_VISION=12,
            CTX_INIT="a photo of a", TEACHER="ViT-L/14", TEACHER_WEIGHTS="", TEMPLATE="",
            TEMPERATURE=1.0, TEACHER_SCALE="own", PREC="fp32", EXPORT="", TEACHER_CACHE="",
            DOMAINS=[], DOMAIN_SAMPLING="size",
        ),
        "ZEROSHOTCLIP": _node(TEMPLATE="", PREC="fp32"),
    }


def extend_cfg(cfg: CN) -> CN:
    """Add every missing plugin key to ``cfg`` (idempotent; existing keys and nodes are kept)."""
    from .dassl_datasets import extend_dataset_cfg

    extend_dataset_cfg(cfg)
    backbone = cfg.MODEL.BACKBONE
    for key, value in (("WEIGHTS", ""), ("WEIGHTS_DIR", ""), ("TEXT_CHUNK", 0)):
        if key not in backbone:
            setattr(backbone, key, value)
    for name, node in {**method_defaults(), **plugin_defaults()}.items():
        if name not in cfg.TRAINER:
            setattr(cfg.TRAINER, name, node)
        else:
            for key, value in node.items():
                if key not in cfg.TRAINER[name]:
                    setattr(cfg.TRAINER[name], key, value)
    return cfg
