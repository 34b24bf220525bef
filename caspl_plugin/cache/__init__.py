"""The teacher-view cache: pay for the teacher once, train the student without it.

:mod:`~caspl_plugin.cache.views` samples and renders deterministic views,
:mod:`~caspl_plugin.cache.store` keeps them on disk (safetensors shards + JSON index, identity
and integrity checks: :class:`CacheError`), :mod:`~caspl_plugin.cache.precompute` fills a cache
(resumable, incremental, torchrun) and :mod:`~caspl_plugin.cache.dataset` feeds a training run
(online or cached).

Imports boosting (the teacher), clip, data, engine and artifacts; nothing imports it but the CLI and
the BoostDistill trainer.
"""
from .dataset import TeacherViewDataset
from .precompute import PrecomputeReport, build_teacher_cache, cache_identity
from .store import CacheError, CacheMismatchError, FileDiff, TeacherViewCache, describe_cache
from .views import AugmentationSettings, ViewParams, render_view, sample_view

__all__ = [
    "AugmentationSettings", "CacheError", "CacheMismatchError", "FileDiff", "PrecomputeReport", "TeacherViewCache",
    "TeacherViewDataset", "ViewParams", "build_teacher_cache", "cache_identity", "describe_cache",
    "render_view", "sample_view",
]
