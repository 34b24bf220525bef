"""The teacher-view cache on disk: safetensors shards + one JSON index, and its integrity and identity checks.

Layout of a cache folder::

    index.json                    identity (teacher, augmentation, views, seed, version), per file:
                                  size, mtime, sha256, shard and row; per shard: rows, feature width,
                                  bytes and sha256; and ``content_sha256`` over all of it
    shards/<digest>.safetensors   per image row: features [n, K, D] (fp16), boxes [n, K, 4]
                                  (top, left, height, width, int32), flips [n, K] (uint8)

Every file is written atomically; a shard's name is the digest of its content plan, so a
precompute that was killed keeps its finished shards and resumes where it stopped (a shard records
the :func:`~caspl_plugin.artifacts.store.content_hash` of its tensors and metadata, checked before it
is reused; the temporary files of a killed write are removed by the next precompute).

Integrity (format 3): :meth:`TeacherViewCache.open` refuses a cache unless

- every field of the index has the type and range it must have (:func:`index_problems`, which names
  the field and what was expected),
- the index's ``content_sha256`` equals the sha256 of its canonical JSON (every key but that one),
- every shard is a plain file name (no separator, no ``..``), resolves inside the cache folder (a
  symbolic link that leaves it is refused), has the recorded size and sha256 (the digest is
  computed once per (path, size, mtime) in a process, as weight digests are:
  :func:`caspl_plugin.files.file_sha256`), and its tensors have the shapes and dtypes of the
  index (rows, views, feature width).

A shard that changes after it was verified is refused when it is opened for reading. Every problem is
a :class:`CacheError` (a ``ValueError``) naming the cache, the file or field, and what was expected.

Several domains (multi-domain phase 1) get one cache each, side by side::

    domains.json                  the domains of the set: name -> folder, with its content_sha256
    <domain name>/index.json      that domain's cache, keys relative to its image folder
    <domain name>/shards/...
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from torch import Tensor

from ..files import file_sha256
from ..files import NotUTF8Error, atomic_write, read_utf8

logger = logging.getLogger(__name__)

CACHE_FORMAT = "caspl-teacher-cache"
#: 2: images are read with data.images.open_rgb (16-bit scaled, alpha on white), as training reads them
#: 3: the index records every shard's sha256, rows, width and bytes, and its own content_sha256
FORMAT_VERSION = 3
INDEX_FILE = "index.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"
DOMAINS_FILE = "domains.json"
DOMAINS_FORMAT = "caspl-teacher-cache-domains"
HASH_KEY = "content_sha256"
FEATURE_DTYPES = ("float16", "float32")
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
#: the largest teacher input side a cache may record (a sane bound: ViT-L/14@336 is 336)
MAX_IMAGE_SIZE = 4096
_SHOWN = 5
_SHOWN_PROBLEMS = 8


class CacheError(ValueError):
    """A teacher-view cache that cannot be used: missing, damaged, modified, or of another format."""


class CacheMismatchError(CacheError):
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


def index_content_hash(index: dict) -> str:
    """sha256 of the index's canonical JSON (sorted keys, no whitespace), every key but ``content_sha256``."""
    from ..files import canonical_json

    return hashlib.sha256(canonical_json({k: v for k, v in index.items() if k != HASH_KEY})).hexdigest()


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


# ---- validation of an index ----------------------------------------------------------------------

def _shown(value: Any) -> str:
    text = repr(value)
    return (text[:60] + "...") if len(text) > 60 else text


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_sha256(value) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def shard_name_problem(name) -> Optional[str]:
    """Why ``name`` cannot name a shard (None if it can): a plain file name ending in ``.safetensors``,
    no path separator, no ``..``, not hidden."""
    if not isinstance(name, str) or not name:
        return f"expected a file name, got {_shown(name)}"
    if "/" in name or "\\" in name or "\x00" in name:
        return f"{name!r} is a path, expected a plain file name inside {SHARD_DIR}/"
    if name.startswith(".") or not name.endswith(SHARD_SUFFIX) or len(name) > 255:
        return f"{name!r} is not a shard file name (expected <hex digest>{SHARD_SUFFIX})"
    return None


def _file_key_problem(key) -> Optional[str]:
    if not isinstance(key, str) or not key:
        return f"expected a relative path, got {_shown(key)}"
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or "\x00" in key or any(part in ("", ".", "..") for part in parts):
        return f"{key!r} is not a plain relative path under the image folder"
    return None


def _check_triplet(problems: list, where: str, value, *, positive: bool) -> None:
    if not (isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value)):
        problems.append(f"{where}: expected 3 finite numbers, got {_shown(value)}")
    elif positive and not all(v != 0 for v in value):
        problems.append(f"{where}: expected 3 non-zero numbers, got {_shown(value)}")


def _check_teacher(problems: list, teacher) -> None:
    keys = {"name", "arch", "weights", "weights_digest", "image_size", "mean", "std"}
    if not isinstance(teacher, dict) or set(teacher) != keys:
        got = sorted(teacher) if isinstance(teacher, dict) else _shown(teacher)
        problems.append(f"teacher: expected an object with {', '.join(sorted(keys))}, got {got}")
        return
    for key in ("name", "arch"):
        if not isinstance(teacher.get(key), str) or not teacher.get(key):
            problems.append(f"teacher.{key}: expected a non-empty string, got {_shown(teacher.get(key))}")
    for key in ("weights", "weights_digest"):
        if teacher.get(key) is not None and not isinstance(teacher.get(key), str):
            problems.append(f"teacher.{key}: expected a string or null, got {_shown(teacher.get(key))}")
    size = teacher.get("image_size")
    if not _is_int(size) or not 1 <= size <= MAX_IMAGE_SIZE:
        problems.append(f"teacher.image_size: expected an integer in 1..{MAX_IMAGE_SIZE}, got {_shown(size)}")
    _check_triplet(problems, "teacher.mean", teacher.get("mean"), positive=False)
    _check_triplet(problems, "teacher.std", teacher.get("std"), positive=True)


def _check_augmentation(problems: list, aug) -> None:
    if not isinstance(aug, dict):
        problems.append(f"augmentation: expected an object, got {_shown(aug)}")
        return
    unknown = sorted(set(aug) - {"scale", "ratio", "flip_probability", "interpolation"})
    if unknown:
        problems.append(f"augmentation: unknown key(s) {unknown}")
    for key, upper in (("scale", 1.0), ("ratio", None)):
        pair = aug.get(key)
        if not (isinstance(pair, list) and len(pair) == 2 and all(_is_number(v) for v in pair)
                and 0 < pair[0] <= pair[1] and (upper is None or pair[1] <= upper)):
            bound = f"0 < min <= max <= {upper:g}" if upper else "0 < min <= max"
            problems.append(f"augmentation.{key}: expected [min, max] with {bound}, got {_shown(pair)}")
    flip = aug.get("flip_probability")
    if not _is_number(flip) or not 0 <= flip <= 1:
        problems.append(f"augmentation.flip_probability: expected a number in 0..1, got {_shown(flip)}")
    if aug.get("interpolation") not in INTERPOLATIONS:
        problems.append(f"augmentation.interpolation: expected one of {', '.join(INTERPOLATIONS)}, got {_shown(aug.get('interpolation'))}")


def _check_file_record(problems: list, where: str, record, *, stored: bool) -> bool:
    keys = {"size", "mtime_ns", "sha256"} | ({"shard", "row"} if stored else set())
    if not isinstance(record, dict) or set(record) != keys:
        got = sorted(record) if isinstance(record, dict) else _shown(record)
        problems.append(f"{where}: expected an object with {', '.join(sorted(keys))}, got {got}")
        return False
    ok = True
    if not _is_int(record["size"]) or record["size"] < 0:
        problems.append(f"{where}.size: expected a non-negative integer, got {_shown(record['size'])}")
        ok = False
    if not _is_int(record["mtime_ns"]):
        problems.append(f"{where}.mtime_ns: expected an integer, got {_shown(record['mtime_ns'])}")
        ok = False
    if not _is_sha256(record["sha256"]):
        problems.append(f"{where}.sha256: expected 64 lower-case hex digits, got {_shown(record['sha256'])}")
        ok = False
    return ok


def _records(problems: list, index: dict, field: str, key_kind: str, key_problem):
    """``(key, where, record)`` of the index's mapping ``field`` (``key_kind`` -> record) whose keys are
    well formed; a mapping that is not an object, and each bad key, is a problem instead."""
    mapping = index.get(field)
    if not isinstance(mapping, dict):
        problems.append(f"{field}: expected an object ({key_kind} -> record), got {_shown(mapping)}")
        return
    for key, record in mapping.items():
        where = f"{field}[{key!r}]"
        reason = key_problem(key)
        if reason:
            problems.append(f"{where}: {reason}")
        else:
            yield key, where, record


def index_problems(index) -> list[str]:
    """Every field of a cache index that does not have the type and range it must have, one line each
    (``field: expected ..., got ...``); empty when the index is well formed. Nothing is read from disk."""
    if not isinstance(index, dict):
        return [f"the index must be a JSON object, got {type(index).__name__}"]
    problems: list[str] = []
    expected_keys = {"format", "format_version", "library_version", "teacher", "augmentation", "views", "seed",
                     "feature_dim", "dtype", "files", "unreadable", "shards", HASH_KEY}
    missing, unknown = sorted(expected_keys - set(index)), sorted(set(index) - expected_keys)
    if missing:
        problems.append(f"missing field(s) {missing}")
    if unknown:
        problems.append(f"unknown field(s) {unknown}")
    if not isinstance(index.get("library_version", ""), str):
        problems.append(f"library_version: expected a string, got {_shown(index.get('library_version'))}")
    if HASH_KEY in index and not _is_sha256(index[HASH_KEY]):
        problems.append(f"{HASH_KEY}: expected 64 lower-case hex digits, got {_shown(index[HASH_KEY])}")
    _check_teacher(problems, index.get("teacher"))
    _check_augmentation(problems, index.get("augmentation"))
    views, dim = index.get("views"), index.get("feature_dim")
    if not _is_int(views) or views < 1:
        problems.append(f"views: expected an integer >= 1, got {_shown(views)}")
    if not _is_int(index.get("seed")):
        problems.append(f"seed: expected an integer, got {_shown(index.get('seed'))}")
    if dim is not None and (not _is_int(dim) or dim < 1):
        problems.append(f"feature_dim: expected an integer >= 1 (or null for a cache without images), got {_shown(dim)}")
    if index.get("dtype") not in FEATURE_DTYPES:
        problems.append(f"dtype: expected one of {', '.join(FEATURE_DTYPES)}, got {_shown(index.get('dtype'))}")
    rows: dict[str, int] = {}
    for name, where, record in _records(problems, index, "shards", "shard file name", shard_name_problem):
        keys = {"rows", "feature_dim", "bytes", "sha256"}
        if not isinstance(record, dict) or set(record) != keys:
            got = sorted(record) if isinstance(record, dict) else _shown(record)
            problems.append(f"{where}: expected an object with {', '.join(sorted(keys))}, got {got}")
            continue
        if not _is_int(record["rows"]) or record["rows"] < 1:
            problems.append(f"{where}.rows: expected an integer >= 1, got {_shown(record['rows'])}")
            continue
        if record["feature_dim"] != dim:
            problems.append(f"{where}.feature_dim: expected the index's feature_dim {_shown(dim)}, got {_shown(record['feature_dim'])}")
        if not _is_int(record["bytes"]) or record["bytes"] < 1:
            problems.append(f"{where}.bytes: expected an integer >= 1, got {_shown(record['bytes'])}")
        if not _is_sha256(record["sha256"]):
            problems.append(f"{where}.sha256: expected 64 lower-case hex digits, got {_shown(record['sha256'])}")
        rows[name] = record["rows"]
    files = index.get("files")
    used: dict[tuple[str, int], str] = {}
    for key, where, record in _records(problems, index, "files", "file key", _file_key_problem):
        if not _check_file_record(problems, where, record, stored=True):
            continue
        shard, row = record["shard"], record["row"]
        if not isinstance(shard, str) or shard not in rows:
            problems.append(f"{where}.shard: expected one of the index's shards, got {_shown(shard)}")
        elif not _is_int(row) or not 0 <= row < rows[shard]:
            problems.append(f"{where}.row: expected an integer in 0..{rows[shard] - 1} (shard {shard} has "
                            f"{rows[shard]} rows), got {_shown(row)}")
        elif (shard, row) in used:
            problems.append(f"{where}: row {row} of shard {shard} is also the row of {used[(shard, row)]!r}")
        else:
            used[(shard, row)] = key
    for key, where, record in _records(problems, index, "unreadable", "file key", _file_key_problem):
        if _check_file_record(problems, where, record, stored=False) and isinstance(files, dict) and key in files:
            problems.append(f"{where}: the file is also listed as stored")
    return problems


def _inside(path: Path, folder: Path) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, base]) == base


def _read_json(path: Path, what: str) -> Any:
    try:
        text = read_utf8(path)
    except OSError as error:
        raise CacheError(f"{what} {path} cannot be read: {error.strerror or error}") from None
    except NotUTF8Error as error:
        raise CacheError(f"{what} {error}; expected the JSON written by `caspl teacher-cache`") from None
    try:
        return json.loads(text)
    except ValueError as error:
        raise CacheError(f"{what} {path} is not valid JSON ({error}); expected the JSON written by `caspl teacher-cache`") from None


def _summary(problems: list[str]) -> str:
    """The problems on one line: the first few, then how many more."""
    shown = problems[:_SHOWN_PROBLEMS]
    more = f"; ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return " " + "; ".join(shown) + more


_REBUILD = "rebuild it with `caspl teacher-cache` (into a new folder, or after removing this one)"


def read_index(folder: Path) -> dict:
    """The index of the cache in ``folder``, well formed and matching its content hash; :class:`CacheError` otherwise."""
    folder = Path(folder)
    path = folder / INDEX_FILE
    if not path.is_file():
        raise CacheError(f"No teacher-view cache at {folder} (no {INDEX_FILE}); make one with `caspl teacher-cache`")
    index = _read_json(path, "teacher-view cache index")
    if not isinstance(index, dict) or index.get("format") != CACHE_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise CacheError(f"{path} is not a teacher-view cache index (format {found!r}, expected {CACHE_FORMAT!r})")
    version = index.get("format_version")
    if version != FORMAT_VERSION:
        older = _is_int(version) and version < FORMAT_VERSION
        raise CacheError(f"{path} has cache format version {_shown(version)}; this version reads {FORMAT_VERSION}"
                         + (" (older caches record no digest of their shards): " + _REBUILD if older else ""))
    problems = index_problems(index)
    if problems:
        raise CacheError(f"Teacher-view cache {folder}: {INDEX_FILE} is malformed:{_summary(problems)}. {_REBUILD[0].upper()}{_REBUILD[1:]}.")
    try:
        computed = index_content_hash(index)
    except ValueError as error:  # NaN or Infinity: no canonical JSON
        computed = f"(not hashable: {error})"
    if computed != index[HASH_KEY]:
        raise CacheError(f"Teacher-view cache {folder}: {INDEX_FILE} does not match its content hash (recorded "
                         f"{index[HASH_KEY]}, computed {computed}): the index was modified after it was written; {_REBUILD}")
    return index


def shard_problems(folder: Path, index: dict) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Verify every shard of a well-formed ``index``: inside the cache, recorded size and sha256, tensor
    shapes and dtypes. Returns ``(name -> (size, mtime_ns) as verified, problems)``."""
    from safetensors import safe_open

    folder = Path(folder)
    views, dim, dtype = index["views"], index["feature_dim"], index["dtype"]
    verified: dict[str, tuple[int, int]] = {}
    problems: list[str] = []
    for name, record in sorted(index["shards"].items()):
        path = folder / SHARD_DIR / name
        where = f"shard {SHARD_DIR}/{name}"
        if not _inside(path, folder):
            problems.append(f"{where} resolves to {os.path.realpath(path)}, outside the cache folder (a symbolic link); "
                            "expected a file inside it")
            continue
        try:
            stat = os.stat(path)
        except OSError as error:
            problems.append(f"{where} is missing ({error.strerror})")
            continue
        if not os.path.isfile(path):
            problems.append(f"{where} is not a file")
            continue
        if stat.st_size != record["bytes"]:
            problems.append(f"{where} has {stat.st_size} bytes, the index records {record['bytes']} (truncated or replaced)")
            continue
        digest = file_sha256(path)
        if digest != record["sha256"]:
            problems.append(f"{where} does not match its sha256 in the index (recorded {record['sha256']}, computed "
                            f"{digest}): it was modified, corrupted or swapped with another shard")
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                shapes = {key: (list(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype())
                          for key in handle.keys()}
        except Exception as error:  # safetensors raises several types for a damaged header
            problems.append(f"{where} is not a readable safetensors file ({error})")
            continue
        rows = record["rows"]
        expected = {"features": ([rows, views, dim], {"float16": "F16", "float32": "F32"}[dtype]),
                    "boxes": ([rows, views, 4], "I32"), "flips": ([rows, views], "U8")}
        if shapes != expected:
            problems.append(f"{where} holds {shapes}, expected {expected} (rows, views {views}, feature_dim {dim}, {dtype})")
            continue
        verified[name] = (stat.st_size, stat.st_mtime_ns)
    return verified, problems


class TeacherViewCache:
    """A cache folder opened for reading: its index, identity and per-view data."""

    def __init__(self, folder: Path, index: dict, verified: Optional[dict[str, tuple[int, int]]] = None):
        self.folder, self.index = Path(folder), index
        #: shard name -> (size, mtime_ns) when it was verified (None: not verified, not checked on reading)
        self.verified = verified
        self._handles: dict[str, object] = {}

    # ---- opening and checking -------------------------------------------------------------
    @classmethod
    def exists(cls, folder: Path) -> bool:
        return (Path(folder) / INDEX_FILE).is_file()

    @classmethod
    def open(cls, folder: str | os.PathLike, *, verify: bool = True) -> "TeacherViewCache":
        """Open the cache in ``folder``: its index well formed and matching its content hash and, with
        ``verify``, every shard inside the folder with its recorded size, sha256 and shapes (see the
        module docstring); :class:`CacheError` naming every problem otherwise."""
        folder = Path(folder)
        index = read_index(folder)
        verified = None
        if verify:
            verified, problems = shard_problems(folder, index)
            if problems:
                raise CacheError(f"Teacher-view cache {folder} is damaged or was modified:{_summary(problems)}. "
                                 f"{_REBUILD[0].upper()}{_REBUILD[1:]}.")
        return cls(folder, index, verified)

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

            path = self.folder / SHARD_DIR / name
            if self.verified is not None:  # the file read is the file verified (a cheap stat per shard)
                try:
                    stat = os.stat(path)
                    now = (stat.st_size, stat.st_mtime_ns)
                except OSError:
                    now = None
                if name not in self.verified or now != self.verified[name] or not _inside(path, self.folder):
                    raise CacheError(f"Teacher-view cache {self.folder}: shard {SHARD_DIR}/{name} changed after it was "
                                     f"verified; {_REBUILD}")
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as error:  # safetensors raises several types for a damaged file
                raise CacheError(f"Teacher-view cache {self.folder}: shard {SHARD_DIR}/{name} cannot be read ({error}); "
                                 f"{_REBUILD}") from None
            self._handles[name] = handle
        return handle

    def view(self, key: str, view: int) -> tuple[tuple[int, int, int, int, bool], Tensor]:
        """``((top, left, height, width, flip), features [D] fp32)`` of view ``view`` of file ``key``."""
        if not 0 <= view < self.views:
            raise CacheError(f"Teacher-view cache {self.folder}: view {view} of {key!r} asked, the cache holds {self.views}")
        entry = self.files[key]
        shard, row = self._shard(entry["shard"]), int(entry["row"])
        box = shard.get_slice("boxes")[row:row + 1, view].reshape(4).tolist()
        flip = bool(shard.get_slice("flips")[row:row + 1, view].reshape(()).item())
        features = shard.get_slice("features")[row:row + 1, view].reshape(-1).float()
        return (*[int(v) for v in box], flip), features

    def __getstate__(self):  # DataLoader workers reopen the shards lazily
        return {"folder": self.folder, "index": self.index, "verified": self.verified}

    def __setstate__(self, state):
        self.folder, self.index, self.verified, self._handles = state["folder"], state["index"], state.get("verified"), {}

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
    """Write ``index`` (with its ``content_sha256``) to ``folder/index.json`` atomically."""
    index = {k: v for k, v in index.items() if k != HASH_KEY}
    index[HASH_KEY] = index_content_hash(index)
    atomic_write(Path(folder) / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")


def domain_cache_folders(folder: str | os.PathLike, names: Sequence[str]) -> dict[str, Path]:
    """``name -> folder/name``: where each domain's cache lives in a multi-domain cache folder.

    A domain name becomes a folder name, so it must be one on every file system (the rules of
    :func:`caspl_plugin.data.domains.check_domain_names`: letters, digits, ``.``, ``_`` and ``-``,
    starting with a letter or digit, unique ignoring case).
    """
    from ..data.domains import check_domain_names

    check_domain_names(names)
    return {name: Path(folder) / name for name in names}


def write_domains_index(folder: str | os.PathLike, counts: dict[str, int]) -> None:
    """The set's ``domains.json``: each domain's folder and image count, and its content_sha256 (rank 0 writes it)."""
    from ..version import __version__

    index = {"format": DOMAINS_FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
             "domains": {name: {"folder": name, "images": int(count)} for name, count in counts.items()}}
    index[HASH_KEY] = index_content_hash(index)
    atomic_write(Path(folder) / DOMAINS_FILE, json.dumps(index, indent=1, sort_keys=True) + "\n")


def read_domains_index(folder: str | os.PathLike) -> dict:
    """The ``domains.json`` of a multi-domain cache folder, well formed, matching its content hash, every
    domain folder a plain name that stays inside ``folder``; :class:`CacheError` otherwise."""
    from ..data.domains import DomainError, check_domain_names

    path = Path(folder) / DOMAINS_FILE
    index = _read_json(path, "multi-domain teacher-view cache index")
    if not isinstance(index, dict) or index.get("format") != DOMAINS_FORMAT:
        raise CacheError(f"{path} is not a multi-domain teacher-view cache index (expected format {DOMAINS_FORMAT!r})")
    if index.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path} has format version {_shown(index.get('format_version'))}; this version reads "
                         f"{FORMAT_VERSION}: {_REBUILD} with --domain/--domains")
    problems = []
    unknown = sorted(set(index) - {"format", "format_version", "library_version", "domains", HASH_KEY})
    if unknown:
        problems.append(f"unknown field(s) {unknown}")
    domains = index.get("domains")
    if not isinstance(domains, dict) or not domains:
        problems.append(f"domains: expected a non-empty object (name -> {{folder, images}}), got {_shown(domains)}")
    else:
        for name, entry in domains.items():
            if not isinstance(entry, dict) or set(entry) != {"folder", "images"} or entry.get("folder") != name \
                    or not _is_int(entry.get("images")) or entry["images"] < 0:
                problems.append(f"domains[{name!r}]: expected {{\"folder\": {name!r}, \"images\": a count}}, got {_shown(entry)}")
        try:
            check_domain_names(list(domains))
        except DomainError as error:
            problems.append(f"domains: {error}")
    if not _is_sha256(index.get(HASH_KEY)):
        problems.append(f"{HASH_KEY}: expected 64 lower-case hex digits, got {_shown(index.get(HASH_KEY))}")
    if problems:
        raise CacheError(f"{path} is malformed:{_summary(problems)}")
    try:
        computed = index_content_hash(index)
    except ValueError as error:
        computed = f"(not hashable: {error})"
    if computed != index[HASH_KEY]:
        raise CacheError(f"{path} does not match its content hash (recorded {index[HASH_KEY]}, computed {computed}): "
                         "it was modified after it was written")
    for name in domains:
        if not _inside(Path(folder) / name, folder):
            raise CacheError(f"{path}: the folder of domain {name!r} resolves to {os.path.realpath(Path(folder) / name)}, "
                             "outside the cache folder (a symbolic link); expected a folder inside it")
    return index


def check_domain_folder(folder: str | os.PathLike, name: str) -> Path:
    """``folder/name`` if it stays inside ``folder`` (not a symbolic link leaving it), else :class:`CacheError`."""
    path = Path(folder) / name
    if not _inside(path, folder):
        raise CacheError(f"Teacher-view cache {folder}: the folder of domain {name!r} resolves to {os.path.realpath(path)}, "
                         "outside the cache folder (a symbolic link); expected a folder inside it")
    return path


def inspect_cache_folder(folder: str | os.PathLike) -> tuple[str, list[str]]:
    """``(report, problems)`` of a cache folder (one domain or several): the report as far as the
    index could be read, and every problem the integrity checks found (empty: the cache verifies)."""
    folder = Path(folder)
    if not (folder / INDEX_FILE).is_file() and (folder / DOMAINS_FILE).is_file():
        try:
            index = read_domains_index(folder)
        except CacheError as error:
            return f"{folder} (multi-domain teacher-view cache)", [str(error)]
        parts = [f"{folder} (multi-domain teacher-view cache: {len(index['domains'])} domains)"]
        problems = []
        for name in sorted(index["domains"]):
            text, found = inspect_cache_folder(folder / name)
            parts.append(text)
            problems += [f"domain {name}: {problem}" for problem in found]
        return "\n".join(parts), problems
    try:
        index = read_index(folder)
    except CacheError as error:
        return f"{folder} (teacher-view cache)", [str(error)]
    _, problems = shard_problems(folder, index)
    return _describe(folder, index, problems), problems


def describe_cache(folder: str | os.PathLike) -> str:
    """A short report of a cache: identity, files, views, feature size and bytes on disk (of every
    domain's cache, for a multi-domain cache folder); :class:`CacheError` if it does not verify."""
    text, problems = inspect_cache_folder(folder)
    if problems:
        raise CacheError(f"Teacher-view cache {folder} does not verify:{_summary(problems)}")
    return text


def _describe(folder: Path, index: dict, problems: list[str]) -> str:
    size = sum(record["bytes"] for record in index["shards"].values())
    files, views = len(index["files"]), index["views"]
    teacher = index["teacher"]
    aug = index["augmentation"]
    rows = [
        ("format", f"{CACHE_FORMAT} v{index['format_version']} (caspl-plugin {index.get('library_version')})"),
        ("teacher", f"{teacher['name']} ({teacher['arch']}), weights {teacher.get('weights')}"),
        ("teacher.weights_digest", teacher["weights_digest"]),
        ("teacher.input", f"{teacher['image_size']} px, mean {teacher['mean']}, std {teacher['std']}"),
        ("augmentation", f"crop scale {aug['scale']}, ratio {[round(r, 4) for r in aug['ratio']]}, flip p={aug['flip_probability']}, {aug['interpolation']}"),
        ("views", f"{views} per image (epoch e uses view e mod {views}), seed {index['seed']}"),
        ("files", f"{files} images" + (f", {len(index['unreadable'])} unreadable (skipped)" if index["unreadable"] else "")),
        ("features", f"{index['feature_dim']} x {index['dtype']}"),
        ("shards", f"{len(index['shards'])} in {SHARD_DIR}/, {size / 2**20:.2f} MiB"),
        ("bytes per image per view", f"{size / max(files * views, 1):.1f}"),
        ("content_sha256", f"{index[HASH_KEY]} (ok: index)"),
        ("verification", "ok (index hash, every shard's sha256, size and shapes)" if not problems
         else f"{len(problems)} problem(s)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{folder} (teacher-view cache)"] + [f"  {k.ljust(width)} : {v}" for k, v in rows]
                     + [f"    problem : {p}" for p in problems])
