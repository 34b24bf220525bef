"""The plugin manager and :func:`enable`, the one call that plugs CasPL into a Dassl project.

In a CoOp-style ``train.py``, after the imports::

    import caspl_plugin; caspl_plugin.enable()

That registers the plugin's trainers and datasets into Dassl (names the host already registered
stay the host's), adds the plugin's config keys to Dassl's defaults (so the host's own
``get_cfg_default()`` has them), applies the Dassl compatibility layer
(:mod:`caspl_plugin.plugin.dassl_compat`; ``CASPL_DASSL_COMPAT=0`` turns it off) and makes
``--trainer CasPL_<X>`` resolve for every registered trainer ``X`` that can take boosting prompts
(the ``caspl_cascade_refusal`` hooks name those that cannot, with the reason). An unknown or refused
name gets that reason, the registered trainers and a did-you-mean instead of Dassl's generic registry
error. The plugin's config nodes survive a host's ``clean_cfg`` (:mod:`caspl_plugin.plugin.cfg_guard`).
Calling it twice is harmless.
"""
from __future__ import annotations

import difflib
import logging
import os
from typing import Optional

from .config import CASCADE_BASE, CASCADE_PREFIX
from .plugins import ENTRY_POINT_GROUP, get_plugin_manager  # noqa: F401  (ENTRY_POINT_GROUP re-exported)

logger = logging.getLogger(__name__)

_state = {"enabled": False, "registered_trainers": [], "registered_datasets": [], "kept_host": []}


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
    if os.environ.get("CASPL_THREADS", "").strip():  # a Dassl run honours the caspl commands' thread setting
        from ..threads import configure_threads

        configure_threads()
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


class UnknownTrainerError(ValueError):
    """``--trainer`` names no registered trainer (nor ``CasPL_`` + one)."""


def cascade_refusal(trainer: type) -> Optional[str]:
    """Why ``CasPL_<trainer>`` cannot work, from the class alone (the ``caspl_cascade_refusal`` hooks), or None."""
    reasons = [reason for reason in get_plugin_manager().hook.caspl_cascade_refusal(trainer=trainer) if reason]
    return "; ".join(reasons) or None


#: class attribute of the ``CasPL_<X>`` classes made on lookup: their ``X``


def _hosts(registry) -> dict[str, type]:
    """The registered trainers, without the ``CasPL_<X>`` classes made on lookup."""
    return {name: cls for name, cls in registry._obj_map.items() if CASCADE_BASE not in vars(cls)}


def _cascadable(name: str, cls: type) -> bool:
    return not name.startswith(CASCADE_PREFIX) and not cascade_refusal(cls)


def lookup_error(registry, name: str) -> ValueError:
    """The error for a trainer name the registry does not resolve: a refused ``CasPL_<X>`` gets the reason,
    an unknown name the registered trainers and the closest names."""
    from .adapters import CascadeRefused

    hosts = _hosts(registry)
    base = name[len(CASCADE_PREFIX):] if name.startswith(CASCADE_PREFIX) else None
    if base is not None and base.startswith(CASCADE_PREFIX):
        return CascadeRefused(f"{name}: the {CASCADE_PREFIX} prefix is not applied twice; "
                              f"--trainer {base} already cascades the boosting prompts")
    if base in hosts:
        reason = cascade_refusal(hosts[base])
        if reason:
            return CascadeRefused(f"{name} is refused: {reason}")
    cascadable = sorted(n for n, cls in hosts.items() if _cascadable(n, cls))
    others = sorted(set(hosts) - set(cascadable))
    candidates = sorted(hosts) + [CASCADE_PREFIX + n for n in cascadable]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6) or \
        sorted(candidates, key=lambda c: -difflib.SequenceMatcher(None, name, c).ratio())[:1]
    what = (f"{base!r} is not a registered trainer, so there is no {name}" if base is not None
            else f"no trainer {name!r} is registered")
    return UnknownTrainerError(
        f"Unknown trainer {name!r}: {what}. Did you mean {' or '.join(close)}? "
        f"Registered trainers, each also as {CASCADE_PREFIX}<name>: {', '.join(cascadable) or 'none'}. "
        f"Registered without a {CASCADE_PREFIX} form: {', '.join(others) or 'none'}."
    )


def _install_cascade_resolution(registry) -> None:
    """Make ``CasPL_<X>`` resolvable for every trainer ``X`` of the registry that can take boosting
    prompts, created on first use; unknown and refused names get :func:`lookup_error`'s message."""
    if getattr(registry, "_caspl_resolution", False):
        return
    real_get, real_names = registry.get, registry.registered_names

    def registered_names():
        names = real_names()
        return names + [CASCADE_PREFIX + n for n, cls in _hosts(registry).items()
                        if CASCADE_PREFIX + n not in names and _cascadable(n, cls)]

    def get(name):
        if name not in registry._obj_map and name.startswith(CASCADE_PREFIX):
            base_name = name[len(CASCADE_PREFIX):]
            base = _hosts(registry).get(base_name)
            if base is None or not _cascadable(base_name, base):
                raise lookup_error(registry, name)
            from .cascade_trainer import make_cascade_trainer  # torch and the adapters: only when a CasPL_ name is asked for

            registry._do_register(name, make_cascade_trainer(base))
        return real_get(name)

    registry.get, registry.registered_names = get, registered_names
    registry._caspl_resolution = True
    _install_availability_check(registry)


def _install_availability_check(registry) -> None:
    """Dassl's ``build_trainer`` checks ``TRAINER.NAME`` against ``registered_names()`` with
    ``check_availability``, whose message lists every name; its module's binding is replaced by one
    that raises :func:`lookup_error` (names it accepts pass as before)."""
    from dassl.engine import build

    if getattr(build.check_availability, "_caspl", False):
        return
    dassl_check = build.check_availability

    def check_availability(requested, available):
        if requested in available:
            return
        if available == registry.registered_names():
            raise lookup_error(registry, requested)
        dassl_check(requested, available)

    check_availability._caspl = True
    build.check_availability = check_availability


def is_enabled() -> bool:
    return _state["enabled"]
