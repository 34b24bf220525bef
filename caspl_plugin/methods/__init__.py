"""Engine-agnostic prompt-learning models on open_clip, and the CasPL cascade."""
from .base import PromptModel, ZeroShotCLIP
from .cascade import cascade, load_boosting_group
from .registry import Preset, get_method, get_preset, list_methods, register_method

__all__ = [
    "PromptModel", "ZeroShotCLIP", "cascade", "load_boosting_group",
    "Preset", "get_method", "get_preset", "list_methods", "register_method",
]
from .coop import CoOp  # noqa: E402
from .cocoop import CoCoOp  # noqa: E402
from .ivlp import IVLP  # noqa: E402
from .maple import MaPLe  # noqa: E402
from .promptsrc import GaussianPromptAggregation, PromptSRC  # noqa: E402
