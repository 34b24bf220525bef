"""The plugin manager and :func:`enable`, the one call that plugs CasPL into a Dassl project.

In a CoOp-style ``train.py``, after the imports::

    import caspl_plugin; caspl_plugin.enable()

That registers the plugin's trainers and datasets into Dassl (names the host already registered
stay the host's), adds the plugin's config keys to Dassl's defaults (so the host's own
``get_cfg_default()`` has them), applies the Dassl compatibility layer
(:mod:`caspl_plugin.plugin.dassl_compat`; ``CASPL_DASSL_COMPAT=0`` turns it off) and makes
``--trainer CasPL_<X>`` resolve for every registered trainer ``X``. The plugin's config nodes survive
a host's ``clean_cfg`` (:mod:`caspl_plugin.plugin.cfg_guard`). Calling it twice is harmless.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from typing import Optional

import pluggy

from . import hookspecs

logger = logging.getLogger(__name__)

#: setuptools entry-point group of third-party plugins
ENTRY_POINT_GROUP = "caspl_plugin"
#: prefix of the cascade trainers: ``CasPL_<X>`` wraps the registered trainer ``X``
CASCADE_PREFIX = "CasPL_"

_state = {"enabled": False, "registered_trainers": [], "registered_datasets": [], "kept_host": []}


@lru_cache(maxsize=None)
def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager: built-in hook implementations plus every installed entry-point plugin."""
    from . import builtin

    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(builtin, name="caspl_plugin.builtin")
    loaded = manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if loaded:
        logger.info("Loaded %d caspl plugin(s) from entry points", loaded)
    return manager


def _flatten(results) -> list:
    return [item for result in results if result for item in result]


def extend_cfg(cfg):
    """Add every plugin's config keys to ``cfg`` (for hosts that build their config by hand)."""
    get_plugin_manager().hook.caspl_extend_config(cfg=cfg)
    return cfg


def _register(registry, classes, kind: str) -> list[str]:
    added = []
    for cls in classes:
        name = cls.__name__
        existing = registry._obj_map.get(name)
        if existing is cls:
            continue
        if existing is not None:
            _state["kept_host"].append(name)
            logger.info("%s %r is already registered by %s; keeping the host's", kind, name, existing.__module__)
            continue
        registry.register(cls)
        added.append(name)
    return added


def enable(compat: Optional[bool] = None) -> dict:
    """Plug CasPL into Dassl (idempotent). Returns what was registered.

    ``compat=None`` applies the compatibility layer unless ``CASPL_DASSL_COMPAT=0``.
    """
    try:
        import dassl.config
        from dassl.data.datasets import DATASET_REGISTRY
        from dassl.engine import TRAINER_REGISTRY
    except ImportError as error:
        raise ImportError(
            "caspl_plugin.enable() needs Dassl (KaiyangZhou/Dassl.pytorch), which is not importable: "
            f"{error}. Install Dassl first; the rest of caspl_plugin works without it."
        ) from error
    from . import cfg_guard, dassl_compat

    if compat is not False:
        dassl_compat.apply()
    manager = get_plugin_manager()
    manager.hook.caspl_extend_config(cfg=dassl.config.defaults._C)
    cfg_guard.guard(dassl.config.defaults._C)  # the plugin's nodes survive a host's clean_cfg
    _state["registered_trainers"] += _register(TRAINER_REGISTRY, _flatten(manager.hook.caspl_dassl_trainers()), "Trainer")
    _state["registered_datasets"] += _register(DATASET_REGISTRY, _flatten(manager.hook.caspl_dassl_datasets()), "Dataset")
    _install_cascade_resolution(TRAINER_REGISTRY)
    if not _state["enabled"]:
        logger.info("caspl_plugin enabled: trainers %s, datasets %s", _state["registered_trainers"], _state["registered_datasets"])
    _state["enabled"] = True
    return {k: list(v) if isinstance(v, list) else v for k, v in _state.items()}


def _install_cascade_resolution(registry) -> None:
    """Make ``CasPL_<X>`` resolvable for every trainer ``X`` of the registry, created on first use."""
    if getattr(registry, "_caspl_resolution", False):
        return
    real_get, real_names = registry.get, registry.registered_names

    def registered_names():
        names = real_names()
        return names + [CASCADE_PREFIX + n for n in names if not n.startswith(CASCADE_PREFIX) and CASCADE_PREFIX + n not in names]

    def get(name):
        if name not in registry._obj_map and name.startswith(CASCADE_PREFIX):
            base_name = name[len(CASCADE_PREFIX):]
            if base_name in registry._obj_map:
                from .cascade_trainer import make_cascade_trainer

                registry._do_register(name, make_cascade_trainer(real_get(base_name)))
        return real_get(name)

    registry.get, registry.registered_names = get, registered_names
    registry._caspl_resolution = True


def is_enabled() -> bool:
    return _state["enabled"]
