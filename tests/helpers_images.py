"""Image folders with unreadable files at known positions, for the probe, skip-count and CLI tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def _cut_png_pixels(path: Path) -> None:
    """Keep the PNG's chunk structure and checksums valid but cut its compressed pixel data in half:
    ``Image.verify()`` accepts such a file, only decoding it fails."""
    import struct
    import zlib

    data = path.read_bytes()
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        chunks.append((kind, data[position + 8:position + 8 + length]))
        position += 12 + length
    pixels = b"".join(body for kind, body in chunks if kind == b"IDAT")
    out = [data[:8]]
    for kind, body in chunks:
        if kind == b"IDAT":
            if pixels is None:
                continue
            body, pixels = pixels[: len(pixels) // 2], None
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    path.write_bytes(b"".join(out))


def write_images_with_bad_ones(folder: Path, count: int, bad_positions) -> tuple[list[Path], list[Path]]:
    """``count`` files ``img_00.png`` ... in sorted order; those at ``bad_positions`` are broken in
    different ways (garbage, empty, truncated PNG, truncated JPEG). Returns (all, bad)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files, bad = [], []
    kinds = ["garbage", "truncated-png", "empty", "truncated-jpeg"]
    for index in range(count):
        suffix = ".jpg" if index % 2 else ".png"
        position_bad = index in bad_positions
        kind = kinds[len(bad) % len(kinds)] if position_bad else None
        if kind == "truncated-jpeg":
            suffix = ".jpg"
        elif kind == "truncated-png":
            suffix = ".png"
        path = folder / f"img_{index:02d}{suffix}"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        if kind == "garbage":
            path.write_bytes(b"this is not an image")
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated-png":
            _cut_png_pixels(path)
        elif kind is not None:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) * 2 // 3])
        files.append(path)
        if position_bad:
            bad.append(path)
    return files, bad
