"""Engine-agnostic prompt-learning models on open_clip, and the CasPL cascade."""
from .base import PromptModel, ZeroShotCLIP

__all__ = ["PromptModel", "ZeroShotCLIP"]
