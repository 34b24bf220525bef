"""The plugin's own hook implementations: its methods, datasets, config keys and CLIP adapters (its
Dassl trainers' hooks are :mod:`caspl_plugin.trainers.hooks`, which needs Dassl)."""
from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def caspl_methods():
    from ..methods.registry import list_methods, get_method

    return [get_method(name) for name in list_methods()]


@hookimpl
def caspl_dassl_datasets():
    from .dassl_datasets import dataset_classes

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
    """Dassl's own trainers (no CLIP) have no ``CasPL_`` form (BoostDistill's refusal is with the
    plugin's trainers, :mod:`caspl_plugin.trainers.hooks`)."""
    module = getattr(trainer, "__module__", "") or ""
    if module.split(".")[0] == "dassl":
        return (f"{trainer.__name__} is one of Dassl's own trainers ({module}): it trains a Dassl backbone "
                "(MODEL.BACKBONE from Dassl's backbone registry) with no CLIP to place prompts in")
    return None
