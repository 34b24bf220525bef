"""Atomic file writes: every file the package writes goes through :func:`atomic_write`."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Optional, Union


def atomic_write(path: Union[str, os.PathLike], data: Union[bytes, str], *, mode: Optional[int] = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a partial file; on any error the destination is left as it was and no
    temporary file remains. The parent folder is created; permissions follow the umask unless
    ``mode`` is given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(temporary, "xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
