"""Atomic file writes: every file the package writes goes through :func:`atomic_write`; and
:func:`canonical_json`, the form in which JSON documents are hashed (artifacts, caches, ONNX metadata);
:func:`file_sha256`, the one digest of a file (weights, cache shards, images, exported classifiers);
:func:`read_utf8`, the one reader of the text files a user hands us (class names, manifests, configs,
cache indexes).

A write goes to ``.<name>.<random hex>.tmp`` in the destination's folder, then ``os.replace``;
a process killed mid-write can leave such a file behind, which :func:`stale_temporaries` finds
(:func:`stale_temporaries_in` for the writes to any file of a folder, e.g. a cache's shards).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Mapping, Optional, Union


class NotUTF8Error(ValueError):
    """A file that must be UTF-8 text is not; the message names the first bad byte, its offset and line."""

    def __init__(self, path: Union[str, os.PathLike], raw: bytes, error: UnicodeDecodeError):
        line = raw[:error.start].count(b"\n") + 1
        self.path = path
        super().__init__(f"{path} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}, line {line})")


def read_utf8(path: Union[str, os.PathLike]) -> str:
    """A text file's content: UTF-8, a leading byte-order mark dropped; :class:`NotUTF8Error` otherwise
    (``OSError`` when it cannot be read)."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise NotUTF8Error(path, raw, error) from None


def canonical_json(document: Mapping[str, Any]) -> bytes:
    """``document`` as canonical JSON: sorted keys, no whitespace, UTF-8, no NaN/Infinity (ValueError)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def temporary_path(path: Union[str, os.PathLike]) -> Path:
    """A fresh temporary name for a write to ``path``: ``.<name>.<8 hex>.tmp`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def stale_temporaries(path: Union[str, os.PathLike]) -> list[Path]:
    """The temporary files of writes to ``path`` that are still on disk (sorted)."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]+\.tmp")
    try:
        entries = list(path.parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(entry for entry in entries if pattern.fullmatch(entry.name) and entry.is_file())


def stale_temporaries_in(folder: Union[str, os.PathLike], suffix: str = "") -> list[Path]:
    """The temporary files of writes to any file of ``folder`` whose name ends in ``suffix`` (sorted)."""
    pattern = re.compile(rf"\..+{re.escape(suffix)}\.[0-9a-f]+\.tmp")
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(entry for entry in entries if pattern.fullmatch(entry.name) and entry.is_file())


def atomic_write(path: Union[str, os.PathLike], data: Union[bytes, str], *, mode: Optional[int] = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a partial file; on any error the destination is left as it was and no
    temporary file remains (an ``OSError`` with an errno but no file name, e.g. a full disk, gets ``path``).
    The parent folder is created; permissions follow the umask unless ``mode`` is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(temporary, "xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            error.filename = str(path)
        raise
    return path


_DIGEST_CHUNK = 8 * 2**20
_digest_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """sha256 of a file, read in chunks; cached per (real path, size, mtime) for this process."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _digest_cache:
        digest = hashlib.sha256()
        with open(real, "rb") as handle:
            for chunk in iter(lambda: handle.read(_DIGEST_CHUNK), b""):
                digest.update(chunk)
        _digest_cache[key] = digest.hexdigest()
    return _digest_cache[key]
