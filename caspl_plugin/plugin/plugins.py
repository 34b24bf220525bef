"""The plugin manager: pluggy with this package's hook specifications, the built-in plugins and every
installed entry-point plugin (group :data:`ENTRY_POINT_GROUP`).

The built-in plugins are named in :data:`BUILTIN_PLUGINS` and imported when the manager is first
asked for, as entry points are: ``caspl_plugin.plugin.builtin`` (datasets, config keys, CLIP
adapters) and ``caspl_plugin.trainers.hooks`` (the Dassl trainers, which need Dassl).
"""
from __future__ import annotations

import importlib
import logging
from functools import lru_cache

import pluggy

from . import hookspecs

logger = logging.getLogger(__name__)

#: setuptools entry-point group of third-party plugins
ENTRY_POINT_GROUP = "caspl_plugin"
#: this package's own plugin modules, registered under their module names
BUILTIN_PLUGINS = ("caspl_plugin.plugin.builtin", "caspl_plugin.trainers.hooks")


@lru_cache(maxsize=None)
def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager: built-in hook implementations plus every installed entry-point plugin."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for name in BUILTIN_PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            if (error.name or "").split(".")[0] != "dassl":
                raise
            logger.debug("built-in plugin %s needs Dassl, which is not installed: not registered", name)
            continue
        manager.register(module, name=name)
    loaded = manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    if loaded:
        logger.info("Loaded %d caspl plugin(s) from entry points", loaded)
    return manager
