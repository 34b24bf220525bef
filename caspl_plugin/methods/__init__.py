"""Engine-agnostic prompt-learning models on open_clip, and the CasPL cascade."""
from .base import PromptModel, ZeroShotCLIP
from .cascade import boosting_group_from_artifact, cascade, load_boosting_group
from .cocoop import CoCoOp
from .coop import CoOp
from .ivlp import IVLP
from .maple import MaPLe
from .promptsrc import GaussianPromptAggregation, PromptSRC
from .registry import Preset, get_method, get_preset, list_methods, register_method

__all__ = [
    "PromptModel", "ZeroShotCLIP", "CoOp", "CoCoOp", "IVLP", "MaPLe", "PromptSRC", "GaussianPromptAggregation",
    "cascade", "load_boosting_group", "boosting_group_from_artifact",
    "Preset", "get_method", "get_preset", "list_methods", "register_method",
]
