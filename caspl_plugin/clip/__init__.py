"""CLIP backbones: open_clip models by Dassl/CoOp or open_clip name, weights from tags or local files."""
from .factory import Backbone, create_clip, list_named_models, resolve_model_name

__all__ = ["Backbone", "create_clip", "list_named_models", "resolve_model_name"]
