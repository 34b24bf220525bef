"""The plugin's config nodes survive a host's ``clean_cfg``.

Many CoOp-family ``train.py`` files call Dassl's ``clean_cfg(cfg, trainer)`` in ``setup_cfg``: it
pops every ``TRAINER.*`` node except ``NAME`` and ``trainer.upper()`` — the plugin's ``CASPL`` and
``BOOSTDISTILL`` included, and for ``--trainer CasPL_X`` even ``X``'s own node. The host imports
``clean_cfg`` by name before :func:`caspl_plugin.enable` runs, so the function cannot be replaced.
Instead the ``TRAINER`` node of Dassl's defaults is *guarded*: a flag in its ``__dict__`` (copied by
``clone()``, so every ``get_cfg_default()`` has it) makes ``pop``/``del`` keep

- the nodes the plugin adds (:func:`guarded_nodes`: its own and the five methods' that its trainers
  read), and
- for ``TRAINER.NAME = CasPL_X``, ``X``'s node (``X.upper()``).

Nodes popped anyway are kept aside on the node, so ``CasPL_X`` can put ``X``'s node back when a
host cleaned its config before setting ``TRAINER.NAME``. ``CfgNode.pop`` and ``__delitem__`` act
differently only on guarded nodes; :func:`unguard_class` restores yacs' own methods.
"""
from __future__ import annotations

import logging
from typing import Iterable

from yacs.config import CfgNode

from .config import CASCADE_PREFIX

logger = logging.getLogger(__name__)

#: ``__dict__`` keys on a guarded node: the flag, and the nodes popped from it anyway
FLAG, REMOVED = "_caspl_guarded", "_caspl_removed"

_yacs_methods: dict = {}


def guarded_nodes() -> frozenset:
    """The ``TRAINER.*`` nodes the plugin adds (never removed from a guarded node)."""
    from .config import method_defaults, plugin_defaults

    return frozenset(method_defaults()) | frozenset(plugin_defaults())


_GUARDED = guarded_nodes()


def _keeps(node: CfgNode, key) -> bool:
    if not node.__dict__.get(FLAG):
        return False
    if key in _GUARDED:
        return True
    name = str(dict.get(node, "NAME", "") or "")
    return name.startswith(CASCADE_PREFIX) and key == name[len(CASCADE_PREFIX):].upper()


def _pop(self, key, *default):
    if _keeps(self, key):
        logger.debug("caspl_plugin: kept TRAINER.%s through a config clean-up", key)
        return dict.get(self, key, *default)
    value = _yacs_methods["pop"](self, key, *default)
    if self.__dict__.get(FLAG) and isinstance(value, CfgNode):
        self.__dict__.setdefault(REMOVED, {})[key] = value
    return value


def _delitem(self, key):
    if _keeps(self, key):
        return
    _pop(self, key)


def guard_class() -> None:
    """Give ``CfgNode`` the guarded ``pop``/``__delitem__`` (idempotent; unguarded nodes unchanged)."""
    if _yacs_methods:
        return
    _yacs_methods["pop"], _yacs_methods["__delitem__"] = CfgNode.pop, CfgNode.__delitem__
    CfgNode.pop, CfgNode.__delitem__ = _pop, _delitem


def unguard_class() -> None:
    """Give ``CfgNode`` yacs' own ``pop``/``__delitem__`` back."""
    if _yacs_methods:
        CfgNode.pop, CfgNode.__delitem__ = _yacs_methods.pop("pop"), _yacs_methods.pop("__delitem__")


def guard(cfg: CfgNode) -> CfgNode:
    """Guard ``cfg.TRAINER`` (and the class); configs cloned from ``cfg`` are guarded too."""
    guard_class()
    cfg.TRAINER.__dict__[FLAG] = True
    return cfg


def removed_node(cfg: CfgNode, key: str):
    """The node ``TRAINER.<key>`` popped from a guarded config, or None."""
    return cfg.TRAINER.__dict__.get(REMOVED, {}).get(key)


def restore_node(cfg: CfgNode, key: str) -> bool:
    """Put a popped ``TRAINER.<key>`` back (through a frozen config too); True when restored."""
    node = removed_node(cfg, key)
    if node is None or key in cfg.TRAINER:
        return False
    frozen = cfg.is_frozen()
    if frozen:
        cfg.defrost()
    cfg.TRAINER[key] = node
    if frozen:
        cfg.freeze()
    logger.warning("caspl_plugin: TRAINER.%s had been removed from the config (clean_cfg?); restored its values", key)
    return True


def require_nodes(cfg: CfgNode, keys: Iterable[str], trainer: str) -> None:
    """Raise a clear error when the config lacks ``TRAINER.<key>`` nodes the plugin reads."""
    missing = [key for key in keys if key not in cfg.TRAINER]
    if not missing:
        return
    names = ", ".join(f"TRAINER.{key}" for key in missing)
    raise KeyError(
        f"{trainer}: the config has no {names}: it was removed after the plugin added it, typically by "
        "Dassl's clean_cfg(cfg, trainer) in the host's setup_cfg, or the config was not built from Dassl's "
        "get_cfg_default(). Call caspl_plugin.enable() before setup_cfg runs (right after the imports of "
        "train.py), or call caspl_plugin.plugin.extend_cfg(cfg) after the clean-up and before the config "
        "files and command-line options are merged."
    )
