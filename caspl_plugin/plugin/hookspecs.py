"""The plugin's hooks (pluggy). Implementations are registered by name: the built-in ones from
:mod:`caspl_plugin.plugin.builtin`, third-party ones from the ``caspl_plugin`` entry-point group::

    # pyproject.toml of a third-party package
    [project.entry-points.caspl_plugin]
    my_plugin = "my_package.caspl_hooks"

    # my_package/caspl_hooks.py
    from caspl_plugin.plugin import hookimpl

    @hookimpl
    def caspl_dassl_trainers():
        from .trainers import MyTrainer
        return [MyTrainer]
"""
from __future__ import annotations

import pluggy

PROJECT = "caspl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def caspl_methods():
    """Return prompt-learning model classes (:class:`~caspl_plugin.methods.PromptModel` subclasses)
    to add to the method registry."""


@hookspec
def caspl_dassl_trainers():
    """Return Dassl trainer classes to register (by class name) when the plugin is enabled.
    A name the host already registered is left to the host."""


@hookspec
def caspl_dassl_datasets():
    """Return Dassl dataset classes to register (by class name), only where the name is free."""


@hookspec
def caspl_extend_config(cfg):
    """Add keys to a Dassl/yacs config (called on Dassl's defaults and by :func:`extend_cfg`).
    Must only add missing keys."""


@hookspec
def caspl_clip_adapters():
    """Return CLIP adapters (objects of :class:`~caspl_plugin.plugin.adapters.ClipAdapter` type)
    that recognise the CLIP inside a host model and attach boosting prompts to it. Adapters from
    later-registered plugins are tried first."""


@hookspec
def caspl_cascade_refusal(trainer):
    """Return why ``CasPL_<trainer>`` cannot work, decided from the trainer class alone (a string), or
    None. Asked when ``CasPL_<name>`` is looked up, before anything is built: a refused trainer has no
    ``CasPL_`` form, and asking for one gives this reason (e.g. a phase-1 trainer that learns the
    boosting prompts itself)."""
