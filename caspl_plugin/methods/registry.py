"""Method registry (timm style): name -> model class, with presets and helpful errors."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..names import did_you_mean

_METHODS: dict[str, type] = {}


@dataclass(frozen=True)
class Preset:
    """A named configuration of a method: model settings plus training settings.

    ``model`` holds constructor keyword arguments of the method class; ``train`` the training recipe
    (the fields of :class:`~caspl_plugin.methods.AdaptSettings`: ``lr``, ``epochs``, ``batch_size``,
    ...); ``cascade`` keyword arguments of :func:`~caspl_plugin.methods.cascade` (e.g. the authors'
    boosting-depth rule of CasPL_PromptSRC), used when boosting prompts are cascaded in.
    """

    name: str
    description: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    cascade: dict[str, Any] = field(default_factory=dict)


def register_method(cls: type) -> type:
    """Class decorator: register a :class:`~caspl_plugin.methods.PromptModel` under ``cls.method``."""
    name = cls.method.lower()
    if name in _METHODS and _METHODS[name] is not cls:
        raise KeyError(f"Method {cls.method!r} is already registered by {_METHODS[name].__module__}")
    _METHODS[name] = cls
    return cls


#: entry-point group through which other packages register methods (``name = "pkg.module"``; the
#: module registers its classes with :func:`register_method` when imported)
ENTRY_POINT_GROUP = "caspl_plugin.methods"
_loaded_entry_points = False


def _load_entry_points() -> None:
    """Import the modules of other packages' methods, once. (The built-in methods register when
    :mod:`caspl_plugin.methods` is imported, which this module's import already did.)"""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def list_methods() -> list[str]:
    _load_entry_points()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    """The class of method ``name`` (case-insensitive); unknown names get suggestions."""
    _load_entry_points()
    key = name.lower()
    if key not in _METHODS:
        raise KeyError(f"Unknown method {name!r}; available: {', '.join(sorted(_METHODS))}." + did_you_mean(key, _METHODS))
    return _METHODS[key]


def get_preset(method: str, preset: str) -> Preset:
    cls = get_method(method)
    presets: dict[str, Preset] = getattr(cls, "presets", {})
    if preset not in presets:
        raise KeyError(f"Method {cls.method!r} has no preset {preset!r}; available: {', '.join(presets) or 'none'}."
                       + did_you_mean(preset, presets))
    return presets[preset]
