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
