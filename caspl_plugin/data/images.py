"""The one way the package opens images (:func:`open_rgb`) and checks them before training
(:func:`probe_images`).

:func:`open_rgb` turns any image PIL can read into 8-bit RGB without losing its tones:

- 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): ``round(v / 257)``, so 0..65535
  maps onto 0..255 (``convert("RGB")`` would clip everything above 255 to white);
- 32-bit integer (``I``): 16-bit data (all values in 0..65535, e.g. a 16-bit PNG read by an
  older Pillow) as above; any other range stretched linearly from its min..max to 0..255;
- float (``F``): values in 0..1 times 255; any other range stretched from its min..max;
- transparency (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a transparent colour,
  premultiplied ``RGBa``/``La``): composited over a white background (:data:`BACKGROUND`);
- everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...): PIL's own conversion.

:func:`probe_images` decodes every file completely once (a truncated file passes
``Image.verify()`` but not a full decode), in a thread pool (PIL releases the GIL while decoding),
and remembers the verdict for the rest of the process, keyed by ``(path, size, mtime)``.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

logger = logging.getLogger(__name__)

#: The colour transparent pixels are composited over.
BACKGROUND = (255, 255, 255)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_uint8(values: np.ndarray, unit: float) -> np.ndarray:
    """``values`` in ``0..unit`` scaled to 0..255; any other range stretched from its min..max."""
    values = values.astype(np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)):
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(values.min()), float(values.max())
    if low < 0 or high > unit:
        values = (values - low) * 255.0 / (high - low) if high > low else np.zeros_like(values)
    else:
        values = values * 255.0 / unit
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def to_rgb(image) -> "Image.Image":
    """``image`` (a PIL image of any mode) as 8-bit RGB, tones preserved (see the module doc)."""
    from PIL import Image

    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        grey = _to_uint8(np.asarray(image), 65535.0)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        grey = _to_uint8(np.asarray(image), 1.0)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    if mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def open_rgb(path: Union[str, os.PathLike]) -> "Image.Image":
    """Open, fully decode and convert the image at ``path`` to 8-bit RGB (see :func:`to_rgb`).

    Raises whatever PIL raises for an unreadable file (``OSError``, ``ValueError``, ...).
    """
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


@dataclass
class ProbeResult:
    """The verdict on every probed file, in the order given."""

    readable: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.readable) + len(self.unreadable)


_cache: dict[tuple[str, int, int], Optional[str]] = {}
_cache_lock = threading.Lock()


def clear_probe_cache() -> None:
    """Forget every verdict :func:`probe_images` remembered."""
    with _cache_lock:
        _cache.clear()


def _reason(error: BaseException, path: Path) -> str:
    text = str(error).replace(f"'{path}'", "").replace(str(path), "").strip(" :") or "unreadable"
    return f"{type(error).__name__}: {text}"


def _cache_key(path: Path) -> tuple[Optional[tuple[str, int, int]], Optional[str]]:
    """``(key, None)`` for an existing non-empty file, else ``(None, reason)``."""
    try:
        stat = path.stat()
    except OSError as error:
        return None, _reason(error, path)
    if stat.st_size == 0:
        return None, "empty file"
    return (str(path), stat.st_size, stat.st_mtime_ns), None


def _decode_verdict(path: Path, key: tuple[str, int, int]) -> Optional[str]:
    try:
        open_rgb(path)
        verdict = None
    except Exception as error:  # any failure to decode is a verdict, never fatal
        verdict = _reason(error, path)
    with _cache_lock:
        _cache[key] = verdict
    return verdict


def probe_image(path: Union[str, os.PathLike]) -> Optional[str]:
    """``None`` if the image at ``path`` opens with :func:`open_rgb`, else why not (one line)."""
    path = Path(path)
    key, reason = _cache_key(path)
    if key is None:
        return reason
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    return _decode_verdict(path, key)


def default_probe_workers() -> int:
    """Threads :func:`probe_images` uses by default: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def probe_images(paths: Iterable[Union[str, os.PathLike]], workers: Optional[int] = None, *, progress: bool = False) -> ProbeResult:
    """Decode every image of ``paths`` once (``workers`` threads) and sort them into readable and
    unreadable ``(path, reason)``; verdicts are remembered for the process (see the module doc)."""
    paths = [Path(p) for p in paths]
    workers = default_probe_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    verdicts: list[Optional[str]] = [None] * len(paths)
    to_decode = []  # (index, key) of the files without a remembered verdict
    for index, path in enumerate(paths):
        key, reason = _cache_key(path)
        if key is None:
            verdicts[index] = reason
            continue
        with _cache_lock:
            known = key in _cache
            verdicts[index] = _cache.get(key)
        if not known:
            to_decode.append((index, key))
    jobs = [(paths[index], key) for index, key in to_decode]
    if workers == 1 or len(jobs) < 2:
        decoded: Iterable[Optional[str]] = (_decode_verdict(path, key) for path, key in jobs)
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        decoded = pool.map(_decode_verdict, *zip(*jobs))
    try:
        if progress:
            from tqdm.auto import tqdm

            decoded = tqdm(decoded, total=len(jobs), desc="checking images", leave=False)
        for (index, _), verdict in zip(to_decode, decoded):
            verdicts[index] = verdict
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    result = ProbeResult()
    for path, verdict in zip(paths, verdicts):
        if verdict is None:
            result.readable.append(path)
        else:
            result.unreadable.append((path, verdict))
    if result.unreadable:
        logger.info("%d of %d images are unreadable", len(result.unreadable), len(paths))
    return result
