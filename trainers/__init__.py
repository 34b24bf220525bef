"""Dassl trainers of the plugin (installed as ``caspl_plugin.trainers``; importing needs Dassl).

``BoostDistill`` (phase 1) and one trainer per method (``ZeroshotCLIP``, ``CoOp``, ``CoCoOp``,
``IVLP``, ``MaPLe``, ``PromptSRC``). ``CasPL_<X>`` trainers are not classes here: after
:func:`caspl_plugin.enable` they resolve for every registered trainer ``X`` (ours or the host's).
"""
from .boost_distill import BoostDistill
from .methods import METHOD_TRAINERS, CoCoOp, CoOp, IVLP, MaPLe, PromptSRC, ZeroshotCLIP

TRAINERS = [BoostDistill, *METHOD_TRAINERS]

__all__ = ["TRAINERS", "BoostDistill", "ZeroshotCLIP", "CoOp", "CoCoOp", "IVLP", "MaPLe", "PromptSRC"]
