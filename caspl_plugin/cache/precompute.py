"""Precompute a teacher-view cache: K deterministic views per image through the teacher's image tower.

Resumable (finished shards are kept and reused after a crash, once their recorded content hash is
checked; the temporary files of a killed write are removed), incremental (``update=True``
computes only new or changed images and drops removed ones) and shardable across ``torchrun``
processes (shard ``i`` is computed by rank ``i mod world_size``; rank 0 writes the index), with
the same bytes as one process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import distributed
from ..artifacts.store import content_hash
from ..files import file_sha256
from ..engine import autocast
from ..files import stale_temporaries, stale_temporaries_in
from .store import (
    CACHE_FORMAT,
    FORMAT_VERSION,
    INDEX_FILE,
    SHARD_DIR,
    SHARD_SUFFIX,
    CacheError,
    CacheMismatchError,
    TeacherViewCache,
    compare_identity,
    diff_files,
    digest_files,
    identity_digest,
    read_shard_plan,
    write_index,
    write_shard,
)
from .views import AugmentationSettings, render_view, sample_view

logger = logging.getLogger(__name__)


@dataclass
class PrecomputeReport:
    """What a precompute did: images computed, kept from the old index, dropped, and unreadable."""

    computed: int = 0
    kept: int = 0
    removed: int = 0
    shards_written: int = 0
    shards_reused: int = 0
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def up_to_date(self) -> bool:
        return self.computed == 0 and self.removed == 0 and self.shards_written == 0 and self.shards_reused == 0


def cache_identity(teacher, views: int, seed: int, augmentation: AugmentationSettings) -> dict:
    """The identity a cache records (and a run checks): teacher, augmentation, views, seed."""
    from ..boosting.teacher import teacher_identity

    if int(views) < 1:
        raise ValueError(f"views must be >= 1, got {views!r}")
    return {"teacher": teacher_identity(teacher), "augmentation": augmentation.to_json(), "views": int(views), "seed": int(seed)}


#: a shard's metadata key for the content hash of its tensors and other metadata (checked before reuse)
CONTENT_KEY = "content_sha256"


def _remove_stale_temporaries(folder: Path) -> int:
    """Remove the temporary files of killed writes of shards and of the index; how many."""
    removed = 0
    for temporary in stale_temporaries_in(folder / SHARD_DIR, SHARD_SUFFIX) + stale_temporaries(folder / INDEX_FILE):
        try:
            temporary.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def _older_format(folder: Path) -> bool:
    """Whether ``folder`` holds the index of an older cache format (rebuilt rather than refused)."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    version = index.get("format_version") if isinstance(index, dict) else None
    return (isinstance(index, dict) and index.get("format") == CACHE_FORMAT and isinstance(version, int)
            and not isinstance(version, bool) and version < FORMAT_VERSION)


def _intact_shard(path: Path) -> bool:
    """Whether a finished shard's tensors and metadata still match the content hash it records."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception:  # a damaged shard is computed again
        return False
    recorded = metadata.pop(CONTENT_KEY, None)
    return recorded is not None and recorded == content_hash(tensors, metadata)


def _plan_shards(keys: Sequence[str], digests: dict, identity_hash: str, shard_size: int, feature_dtype: str) -> list[tuple[str, list[str], dict]]:
    plan = []
    for start in range(0, len(keys), shard_size):
        chunk = list(keys[start:start + shard_size])
        metadata = {
            "format": CACHE_FORMAT,
            "identity": identity_hash,
            "dtype": feature_dtype,
            "files": json.dumps(chunk),
            "sha256": json.dumps([digests[k]["sha256"] for k in chunk]),
        }
        name = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:32] + ".safetensors"
        plan.append((name, chunk, metadata))
    return plan


@torch.no_grad()
def _compute_shard(teacher, paths: list[Path], keys: list[str], identity: dict, batch_size: int, device, precision: str, dtype: torch.dtype):
    from ..data.images import open_rgb

    views, seed = identity["views"], identity["seed"]
    augmentation = AugmentationSettings.from_json(identity["augmentation"])
    size, mean, std = identity["teacher"]["image_size"], identity["teacher"]["mean"], identity["teacher"]["std"]
    boxes = torch.zeros(len(keys), views, 4, dtype=torch.int32)
    flips = torch.zeros(len(keys), views, dtype=torch.uint8)
    pixels, unreadable = [], []
    for row, (path, key) in enumerate(zip(paths, keys)):
        try:
            image = open_rgb(path)
        except Exception as error:  # counted and reported, never fatal
            logger.warning("Skipping unreadable image %s: %s", path, error)
            unreadable.append(key)
            pixels.extend([torch.zeros(3, size, size)] * views)
            continue
        for k in range(views):
            params = sample_view(image.width, image.height, seed, key, k, augmentation)
            boxes[row, k] = torch.tensor([params.top, params.left, params.height, params.width], dtype=torch.int32)
            flips[row, k] = int(params.flip)
            pixels.append(render_view(image, params, size, mean, std, augmentation.interpolation))
    features = []
    for start in range(0, len(pixels), batch_size):
        batch = torch.stack(pixels[start:start + batch_size]).to(device)
        with autocast(device, precision):
            out = teacher.model.encode_image(batch)
        features.append(F.normalize(out.float(), dim=-1).cpu())
    features = torch.cat(features).reshape(len(keys), views, -1)
    return {"features": features.to(dtype), "boxes": boxes, "flips": flips}, unreadable


def build_teacher_cache(
    folder: str | Path,
    files: Sequence[Path],
    root: str | Path,
    teacher,
    *,
    views: int,
    seed: int = 1,
    augmentation: AugmentationSettings = AugmentationSettings(),
    update: bool = False,
    shard_size: int = 256,
    batch_size: int = 64,
    device: Optional[torch.device | str] = None,
    precision: str = "auto",
    feature_dtype: str = "float16",
    progress: bool = False,
) -> PrecomputeReport:
    """Make (or resume, or with ``update`` refresh) the teacher-view cache of ``files`` in ``folder``.

    ``teacher`` is a :class:`~caspl_plugin.clip.Backbone` (any open_clip CLIP); ``root`` is the
    folder file keys are relative to. ``precision="auto"`` runs the teacher in fp16 on CUDA and in
    fp32 elsewhere. Features are stored as ``feature_dtype`` (``float16``, or ``float32`` for
    bit-exact comparisons with an online run). Under torchrun every process calls this with the
    same arguments.
    """
    if feature_dtype not in ("float16", "float32"):
        raise ValueError(f"feature_dtype must be 'float16' or 'float32', got {feature_dtype!r}")
    from tqdm.auto import tqdm

    started = time.perf_counter()
    folder, root = Path(folder), Path(root)
    device = torch.device(device) if device is not None else next(teacher.model.parameters()).device
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if int(shard_size) < 1 or int(batch_size) < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1, got {shard_size!r}, {batch_size!r}")
    identity = cache_identity(teacher, views, seed, augmentation)
    identity_hash = identity_digest(identity)
    shard_dir = folder / SHARD_DIR
    if distributed.is_main():
        removed = _remove_stale_temporaries(folder)
        if removed:
            logger.info("teacher-view cache %s: removed %d temporary file(s) left by an interrupted run", folder, removed)
    distributed.barrier()
    existing = None
    if TeacherViewCache.exists(folder):
        if _older_format(folder):
            logger.warning("teacher-view cache %s was written by an older version (format < %d): rebuilding it",
                           folder, FORMAT_VERSION)
        else:  # verified once, by rank 0: a damaged or modified cache is refused by every process
            problem = None
            if distributed.is_main():
                try:
                    TeacherViewCache.open(folder)
                except CacheError as error:
                    problem = str(error)
            problem = distributed.broadcast_object(problem)
            if problem is not None:
                raise CacheError(problem)
            existing = TeacherViewCache.open(folder, verify=False)
    known = {**existing.files, **existing.index.get("unreadable", {})} if existing else None
    current = digest_files(files, root, known)
    paths = {key: Path(path) for key, path in zip(current, files)}
    report = PrecomputeReport()
    kept: dict[str, dict] = {}
    if existing is not None:
        problems = compare_identity(identity, existing.index)
        if existing.index.get("dtype") != feature_dtype:
            problems.append(f"dtype: cache has {existing.index.get('dtype')!r}, this run {feature_dtype!r}")
        if problems:
            raise CacheMismatchError(
                f"Teacher-view cache {folder} was made with other settings:\n  " + "\n  ".join(problems)
                + "\n--update only follows image changes; use another cache folder for another teacher, augmentation, K or seed."
            )
        diff = diff_files(current, known)
        if diff and not update:
            raise CacheMismatchError(f"Teacher-view cache {folder} is stale: {diff.describe()}; rerun with --update")
        if not diff:
            report.kept = len(existing.files)
            report.seconds = time.perf_counter() - started
            return report
        stale = set(diff.changed) | set(diff.removed)
        kept = {k: v for k, v in existing.files.items() if k not in stale}
        report.removed = len(diff.removed)
    pending = sorted(k for k in current if k not in kept)
    plan = _plan_shards(pending, current, identity_hash, int(shard_size), feature_dtype)
    rank, world = distributed.rank(), distributed.world_size()
    mine = [entry for i, entry in enumerate(plan) if i % world == rank]
    bar = tqdm(mine, desc="teacher views", disable=not (progress and distributed.is_main()), leave=False)
    for name, chunk, metadata in bar:
        path = shard_dir / name
        done = read_shard_plan(path)
        if done is not None and all(done.get(k) == v for k, v in metadata.items()):
            if _intact_shard(path):
                report.shards_reused += 1
                continue
            logger.warning("teacher-view cache %s: shard %s does not match its content hash: computing it again", folder, name)
        tensors, unreadable = _compute_shard(teacher, [paths[k] for k in chunk], chunk, identity, int(batch_size), device, precision, getattr(torch, feature_dtype))
        shard_metadata = {**metadata, "unreadable": json.dumps(unreadable)}
        shard_metadata[CONTENT_KEY] = content_hash(tensors, shard_metadata)
        write_shard(path, tensors, shard_metadata)
        report.shards_written += 1
    distributed.barrier()
    report.computed = len(pending)
    if distributed.is_main():
        entries, unreadable_records = dict(kept), {}
        shards = {} if existing is None else {n: s for n, s in existing.index["shards"].items() if any(e["shard"] == n for e in kept.values())}
        for name, chunk, _ in plan:
            bad = set(json.loads((read_shard_plan(shard_dir / name) or {}).get("unreadable", "[]")))
            for row, key in enumerate(chunk):
                if key in bad:
                    unreadable_records[key] = current[key]
                else:
                    entries[key] = {**current[key], "shard": name, "row": row}
            shards[name] = {"rows": len(chunk)}
        feature_dim = None
        for name in sorted(shards):
            from safetensors import safe_open

            path = shard_dir / name
            with safe_open(str(path), framework="pt") as handle:
                feature_dim = int(handle.get_slice("features").get_shape()[-1])
            shards[name] = {"rows": shards[name]["rows"], "feature_dim": feature_dim, "bytes": path.stat().st_size,
                            "sha256": file_sha256(path)}
        from ..version import __version__

        index = {
            "format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
            **identity, "feature_dim": feature_dim, "dtype": feature_dtype,
            "files": {k: entries[k] for k in sorted(entries)},
            "unreadable": {k: unreadable_records[k] for k in sorted(unreadable_records)},
            "shards": shards,
        }
        write_index(folder, index)
        for orphan in shard_dir.glob("*" + SHARD_SUFFIX):
            if orphan.name not in shards:
                orphan.unlink()
        report.unreadable = sorted(unreadable_records)
    distributed.barrier()
    report.kept = len(kept)
    report.seconds = time.perf_counter() - started
    logger.info("teacher-view cache %s: %d images computed (%d shards written, %d reused), %d kept, %d removed, %d unreadable",
                folder, report.computed, report.shards_written, report.shards_reused, report.kept, report.removed, len(report.unreadable))
    return report
