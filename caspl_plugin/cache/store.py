"""The teacher-view cache on disk: safetensors shards + one JSON index, and its identity checks.

Layout of a cache folder::

    index.json                    identity (teacher, augmentation, views, seed, version) and
                                  per file: size, mtime, sha256, shard and row
    shards/<digest>.safetensors   per image row: features [n, K, D] (fp16), boxes [n, K, 4]
                                  (top, left, height, width, int32), flips [n, K] (uint8)

Every file is written atomically; a shard's name is the digest of its content plan, so a
precompute that was killed keeps its finished shards and resumes where it stopped.

Several domains (multi-domain phase 1) get one cache each, side by side::

    domains.json                  the domains of the set: name -> folder
    <domain name>/index.json      that domain's cache, keys relative to its image folder
    <domain name>/shards/...
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

from torch import Tensor

from ..clip.weights import file_sha256
from ..files import atomic_write

logger = logging.getLogger(__name__)

CACHE_FORMAT = "caspl-teacher-cache"
#: 2: images are read with data.images.open_rgb (16-bit scaled, alpha on white), as training reads them
FORMAT_VERSION = 2
INDEX_FILE = "index.json"
SHARD_DIR = "shards"
DOMAINS_FILE = "domains.json"
DOMAINS_FORMAT = "caspl-teacher-cache-domains"
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHOWN = 5


class CacheMismatchError(ValueError):
    """The cache does not match the run (folder, teacher, augmentation, views or seed)."""


def file_key(path: Path, root: Path) -> str:
    """A file's identity in the cache: its path relative to the image root, '/'-separated."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def digest_files(files: Sequence[Path], root: Path, known: Optional[dict] = None) -> dict[str, dict]:
    """``key -> {size, mtime_ns, sha256}``; sha256 is reused from ``known`` when size and mtime agree."""
    known = known or {}
    records = {}
    for path in files:
        key = file_key(path, root)
        stat = Path(path).stat()
        old = known.get(key)
        if old is not None and old.get("size") == stat.st_size and old.get("mtime_ns") == stat.st_mtime_ns:
            sha = old["sha256"]
        else:
            sha = file_sha256(Path(path))
        records[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
    return records


def identity_digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode("utf-8")).hexdigest()


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")


@dataclass
class FileDiff:
    """How a folder differs from a cache's index."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def describe(self) -> str:
        parts = [f"{len(v)} {name} ({_listing(v)})" for name, v in (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if v]
        return "; ".join(parts)


def diff_files(current: dict[str, dict], cached: dict[str, dict]) -> FileDiff:
    """Compare file digests: added, changed (other sha256) and removed keys."""
    return FileDiff(
        added=sorted(set(current) - set(cached)),
        changed=sorted(k for k in set(current) & set(cached) if current[k]["sha256"] != cached[k]["sha256"]),
        removed=sorted(set(cached) - set(current)),
    )


def compare_identity(expected: dict, cached: dict) -> list[str]:
    """Human-readable differences between a run's identity and a cache's (empty when equal)."""
    problems = []
    for section in ("teacher", "augmentation", "views", "seed"):
        want, have = expected.get(section), cached.get(section)
        if want is None:
            continue
        if isinstance(want, dict) and isinstance(have, dict):
            for key in sorted(want):  # the keys the run knows (a text-only teacher has no image size)
                if key == "weights":  # where the weights were read from; the digest decides
                    continue
                if want.get(key) != have.get(key):
                    problems.append(f"{section}.{key}: cache has {have.get(key)!r}, this run {want.get(key)!r}")
        elif want != have:
            problems.append(f"{section}: cache has {have!r}, this run {want!r}")
    return problems


class TeacherViewCache:
    """A cache folder opened for reading: its index, identity and per-view data."""

    def __init__(self, folder: Path, index: dict):
        self.folder, self.index = Path(folder), index
        self._handles: dict[str, object] = {}

    # ---- opening and checking -------------------------------------------------------------
    @classmethod
    def exists(cls, folder: Path) -> bool:
        return (Path(folder) / INDEX_FILE).is_file()

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "TeacherViewCache":
        folder = Path(folder)
        path = folder / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"No teacher-view cache at {folder} (no {INDEX_FILE}); make one with `caspl teacher-cache`")
        index = json.loads(path.read_text(encoding="utf-8"))
        if index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path} is not a teacher-view cache index (format {index.get('format')!r}, expected {CACHE_FORMAT!r})")
        if index.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has cache format version {index.get('format_version')!r}; this version reads {FORMAT_VERSION}")
        return cls(folder, index)

    @property
    def identity(self) -> dict:
        return {k: self.index[k] for k in ("teacher", "augmentation", "views", "seed")}

    @property
    def views(self) -> int:
        return int(self.index["views"])

    @property
    def files(self) -> dict[str, dict]:
        return self.index["files"]

    def check(self, identity: dict, current_files: Optional[dict[str, dict]] = None) -> None:
        """Raise :class:`CacheMismatchError` naming every difference from the run's identity
        (keys of ``identity`` that are None are not checked) and from the folder's files."""
        problems = compare_identity(identity, self.index)
        if current_files is not None:
            known = {**self.files, **self.index.get("unreadable", {})}
            diff = diff_files(current_files, known)
            if diff:
                problems.append(f"image folder: {diff.describe()}")
        if problems:
            raise CacheMismatchError(
                f"Teacher-view cache {self.folder} does not match this run:\n  " + "\n  ".join(problems)
                + "\nRebuild it (`caspl teacher-cache ... --update` for changed images) or use another cache folder."
            )

    # ---- reading --------------------------------------------------------------------------
    def _shard(self, name: str):
        handle = self._handles.get(name)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(self.folder / SHARD_DIR / name), framework="pt")
            self._handles[name] = handle
        return handle

    def view(self, key: str, view: int) -> tuple[tuple[int, int, int, int, bool], Tensor]:
        """``((top, left, height, width, flip), features [D] fp32)`` of view ``view`` of file ``key``."""
        entry = self.files[key]
        shard, row = self._shard(entry["shard"]), int(entry["row"])
        box = shard.get_slice("boxes")[row:row + 1, view].reshape(4).tolist()
        flip = bool(shard.get_slice("flips")[row:row + 1, view].reshape(()).item())
        features = shard.get_slice("features")[row:row + 1, view].reshape(-1).float()
        return (*[int(v) for v in box], flip), features

    def __getstate__(self):  # DataLoader workers reopen the shards lazily
        return {"folder": self.folder, "index": self.index}

    def __setstate__(self, state):
        self.folder, self.index, self._handles = state["folder"], state["index"], {}

    def describe(self) -> str:
        return describe_cache(self.folder)


def read_shard_plan(path: Path) -> Optional[dict]:
    """The metadata of a finished shard (None if missing or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata()
    except Exception:  # a missing or corrupt shard is recomputed
        return None


def write_shard(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save

    atomic_write(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def write_index(folder: Path, index: dict) -> None:
    atomic_write(Path(folder) / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")


def domain_cache_folders(folder: str | os.PathLike, names: Sequence[str]) -> dict[str, Path]:
    """``name -> folder/name``: where each domain's cache lives in a multi-domain cache folder.

    A domain name becomes a folder name, so it must be one on every file system: letters, digits,
    ``.``, ``_`` and ``-``, not starting with ``.``/``-``/``_``, and unique ignoring case.
    """
    bad = [name for name in names if not _FOLDER_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"domain name(s) {bad} cannot name a cache folder: use letters, digits, '.', '_' and '-' "
                         "(starting with a letter or digit)")
    seen: dict[str, str] = {}
    for name in names:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise ValueError(f"domain names {other!r} and {name!r} differ only in case: their cache folders would "
                             "collide on a case-insensitive file system")
    return {name: Path(folder) / name for name in names}


def write_domains_index(folder: str | os.PathLike, counts: dict[str, int]) -> None:
    """The set's ``domains.json``: each domain's folder and image count (rank 0 writes it)."""
    from ..version import __version__

    index = {"format": DOMAINS_FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
             "domains": {name: {"folder": name, "images": int(count)} for name, count in counts.items()}}
    atomic_write(Path(folder) / DOMAINS_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")


def read_domains_index(folder: str | os.PathLike) -> dict:
    path = Path(folder) / DOMAINS_FILE
    index = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(index, dict) or index.get("format") != DOMAINS_FORMAT or not isinstance(index.get("domains"), dict):
        raise ValueError(f"{path} is not a multi-domain teacher-view cache index (expected format {DOMAINS_FORMAT!r})")
    for name, entry in index["domains"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("folder"), str) or not isinstance(entry.get("images"), int):
            raise ValueError(f"{path}: domain {name!r} must be {{\"folder\": str, \"images\": int}}, got {entry!r}")
        domain_cache_folders(folder, [entry["folder"]])  # a name that is a plain folder name, nothing else
    return index


def describe_cache(folder: str | os.PathLike) -> str:
    """A short report of a cache: identity, files, views, feature size and bytes on disk (of every
    domain's cache, for a multi-domain cache folder)."""
    if not (Path(folder) / INDEX_FILE).is_file() and (Path(folder) / DOMAINS_FILE).is_file():
        index = read_domains_index(folder)
        parts = [f"{folder} (multi-domain teacher-view cache: {len(index['domains'])} domains)"]
        for entry in sorted(index["domains"].values(), key=lambda e: e["folder"]):
            parts.append(describe_cache(domain_cache_folders(folder, [entry["folder"]])[entry["folder"]]))
        return "\n".join(parts)
    cache = TeacherViewCache.open(folder)
    index = cache.index
    shard_dir = Path(folder) / SHARD_DIR
    size = sum(p.stat().st_size for p in shard_dir.glob("*.safetensors")) if shard_dir.is_dir() else 0
    files, views = len(index["files"]), cache.views
    teacher = index["teacher"]
    aug = index["augmentation"]
    rows = [
        ("format", f"{CACHE_FORMAT} v{index['format_version']} (caspl-plugin {index.get('library_version')})"),
        ("teacher", f"{teacher['name']} ({teacher['arch']}), weights {teacher.get('weights')}"),
        ("teacher.weights_digest", teacher["weights_digest"]),
        ("teacher.input", f"{teacher['image_size']} px, mean {teacher['mean']}, std {teacher['std']}"),
        ("augmentation", f"crop scale {aug['scale']}, ratio {[round(r, 4) for r in aug['ratio']]}, flip p={aug['flip_probability']}, {aug['interpolation']}"),
        ("views", f"{views} per image (epoch e uses view e mod {views}), seed {index['seed']}"),
        ("files", f"{files} images" + (f", {len(index.get('unreadable', {}))} unreadable (skipped)" if index.get("unreadable") else "")),
        ("features", f"{index['feature_dim']} x {index['dtype']}"),
        ("shards", f"{len(index['shards'])} in {SHARD_DIR}/, {size / 2**20:.2f} MiB"),
        ("bytes per image per view", f"{size / max(files * views, 1):.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{folder} (teacher-view cache)"] + [f"  {k.ljust(width)} : {v}" for k, v in rows])
