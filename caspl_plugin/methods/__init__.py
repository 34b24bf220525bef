"""Phase 2: the prompt-learning methods on open_clip (CoOp, CoCoOp, IVLP, MaPLe, PromptSRC, zero-shot),
their registry and presets, the CasPL cascade (frozen boosting prompts beside a method's own) and the
library's phase-2 front door (:class:`AdaptSettings` + :func:`run_adaptation`). Imports prompts,
engine, data (templates), artifacts and distributed; nothing here knows the CLI, Dassl or the
boosting phase's training."""
from .adapt import AdaptReport, AdaptSettings, run_adaptation
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
    "AdaptSettings", "AdaptReport", "run_adaptation",
]
