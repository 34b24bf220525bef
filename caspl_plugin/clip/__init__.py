"""CLIP backbones: open_clip models by Dassl/CoOp or open_clip name, weights from tags or local files.

Owns model names, weight resolution and reading, and the check of recorded weights; imports
artifacts (the restricted reader) and toy (the shipped toy weights).
"""
from .factory import Backbone, create_clip, uses_quick_gelu
from .names import DASSL_NAMES, list_named_models, resolve_model_name
from .weights import (
    PACKAGE_WEIGHT_LOADERS,
    IncompatibleWeightsError,
    WeightsNotFoundError,
    WeightsSource,
    resolve_weights,
)

__all__ = [
    "Backbone",
    "DASSL_NAMES",
    "IncompatibleWeightsError",
    "PACKAGE_WEIGHT_LOADERS",
    "WeightsNotFoundError",
    "WeightsSource",
    "create_clip",
    "list_named_models",
    "resolve_model_name",
    "resolve_weights",
    "uses_quick_gelu",
]
