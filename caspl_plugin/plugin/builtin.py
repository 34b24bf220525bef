"""The plugin's own hook implementations: its trainers, datasets, config keys and CLIP adapters."""
from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def caspl_methods():
    from ..methods.registry import list_methods, get_method

    return [get_method(name) for name in list_methods()]


@hookimpl
def caspl_dassl_trainers():
    from caspl_plugin.trainers import TRAINERS

    return list(TRAINERS)


@hookimpl
def caspl_dassl_datasets():
    from ..data.dassl_datasets import dataset_classes

    return list(dataset_classes().values())


@hookimpl
def caspl_extend_config(cfg):
    from .config import extend_cfg

    extend_cfg(cfg)


@hookimpl
def caspl_clip_adapters():
    from .adapters import PromptModelAdapter
    from .openai_adapters import openai_clip_adapters

    return [PromptModelAdapter(), *openai_clip_adapters()]


@hookimpl
def caspl_cascade_refusal(trainer):
    """Dassl's own trainers (no CLIP) and BoostDistill (phase 1) have no ``CasPL_`` form."""
    module = getattr(trainer, "__module__", "") or ""
    if module.split(".")[0] == "dassl":
        return (f"{trainer.__name__} is one of Dassl's own trainers ({module}): it trains a Dassl backbone "
                "(MODEL.BACKBONE from Dassl's backbone registry) with no CLIP to place prompts in")
    from caspl_plugin.trainers import BoostDistill

    if issubclass(trainer, BoostDistill):
        return (f"{trainer.__name__} is phase 1: it learns the boosting prompts itself (its student's prompts are the "
                "boosting group), so it cannot take a second, frozen one. Phase 2 is CasPL_<method> "
                "(CasPL_CoOp, CasPL_CoCoOp, CasPL_IVLP, CasPL_MaPLe, CasPL_PromptSRC or a host's trainer) with "
                f"TRAINER.CASPL.BOOSTING set to {trainer.__name__}'s OUTPUT_DIR")
    return None
