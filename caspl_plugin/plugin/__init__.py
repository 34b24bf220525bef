"""The plugin layer: pluggy hooks, the plugin manager and the Dassl integration (Dassl is imported
only by :func:`enable` and the trainers).

Imports methods, prompts, clip, data and artifacts; the only layer (with the trainers) that knows
Dassl (.importlinter).
"""
from .hookspecs import hookimpl, hookspec
from .manager import enable, extend_cfg, is_enabled
from .plugins import ENTRY_POINT_GROUP, get_plugin_manager

__all__ = ["hookimpl", "hookspec", "ENTRY_POINT_GROUP", "enable", "extend_cfg", "get_plugin_manager", "is_enabled"]
