"""Throughput of the pre-training image probe (:func:`caspl_plugin.data.images.probe_images`):
images per second for 1, 2, ... threads on a generated folder of small JPEG and PNG images
(a full decode of every file; the verdict cache is cleared before each measurement).

    python benchmarks/bench_probe.py [--images 2000] [--size 64] [--threads 1 2] [--repeats 3] [--folder DIR]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from caspl_plugin.data.images import clear_probe_cache, probe_images


def write_folder(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` random images of ``size`` x ``size``, alternately JPEG and PNG."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"img_{index:05d}.{'jpg' if index % 2 else 'png'}"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="side of each generated image in pixels")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folder", help="where to write the images (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        paths = write_folder(Path(args.folder or scratch), args.images, args.size)
        print(f"{len(paths)} images of {args.size}x{args.size} (half JPEG, half PNG)")
        for threads in args.threads:
            rates = []
            for _ in range(args.repeats):
                clear_probe_cache()
                started = time.perf_counter()
                result = probe_images(paths, workers=threads)
                rates.append(len(paths) / (time.perf_counter() - started))
                assert len(result.readable) == len(paths)
            started = time.perf_counter()
            probe_images(paths, workers=threads)
            cached = len(paths) / (time.perf_counter() - started)
            print(f"threads {threads}: {statistics.median(rates):8.0f} images/s (median of {args.repeats}, "
                  f"best {max(rates):.0f}); cached verdicts {cached:.0f} images/s")


if __name__ == "__main__":
    main()
