"""The hook implementations of the plugin's Dassl trainers (a built-in plugin of
:func:`caspl_plugin.plugin.plugins.get_plugin_manager`): the trainers to register, and the refusal of
``CasPL_BoostDistill``."""
from __future__ import annotations

from caspl_plugin.plugin.hookspecs import hookimpl

from . import TRAINERS, BoostDistill


@hookimpl
def caspl_dassl_trainers():
    return list(TRAINERS)


@hookimpl
def caspl_cascade_refusal(trainer):
    """BoostDistill (phase 1) has no ``CasPL_`` form."""
    if isinstance(trainer, type) and issubclass(trainer, BoostDistill):
        return (f"{trainer.__name__} is phase 1: it learns the boosting prompts itself (its student's prompts are the "
                "boosting group), so it cannot take a second, frozen one. Phase 2 is CasPL_<method> "
                "(CasPL_CoOp, CasPL_CoCoOp, CasPL_IVLP, CasPL_MaPLe, CasPL_PromptSRC or a host's trainer) with "
                f"TRAINER.CASPL.BOOSTING set to {trainer.__name__}'s OUTPUT_DIR")
    return None
