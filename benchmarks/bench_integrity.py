"""The cost of verifying what we read back: a teacher-view cache (milliseconds per GB of shards, on
the first open in a process and again once the digests are cached per path, size and mtime) and an
exported classifier (milliseconds per .onnx file: reading it, checking its digest and every field
against the graph; the onnxruntime session that follows is timed for scale).

    python benchmarks/bench_integrity.py [--images 10000] [--views 20] [--width 768] [--repeats 3] [--vit-b16]

The cache is synthetic (random fp16 features of the given width, e.g. ViT-L/14's 768, in shards of
256 images), written to a temporary folder; the files are in the page cache when they are hashed,
so the figure is the hashing cost, not the disk's.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def write_cache(folder: Path, images: int, views: int, width: int, shard_size: int = 256) -> int:
    """A well-formed teacher-view cache of ``images`` x ``views`` random features; its shard bytes."""
    from caspl_plugin.version import __version__
    from caspl_plugin.cache.store import CACHE_FORMAT, FORMAT_VERSION, SHARD_DIR, write_index, write_shard
    from caspl_plugin.clip.weights import file_sha256

    generator = torch.Generator().manual_seed(0)
    files, shards, total = {}, {}, 0
    for start in range(0, images, shard_size):
        rows = min(shard_size, images - start)
        name = f"{start:032x}.safetensors"
        path = folder / SHARD_DIR / name
        write_shard(path, {"features": torch.randn(rows, views, width, generator=generator).half(),
                           "boxes": torch.zeros(rows, views, 4, dtype=torch.int32) + 1,
                           "flips": torch.zeros(rows, views, dtype=torch.uint8)}, {"format": CACHE_FORMAT})
        size = path.stat().st_size
        total += size
        shards[name] = {"rows": rows, "feature_dim": width, "bytes": size, "sha256": file_sha256(path)}
        for row in range(rows):
            files[f"img/{start + row:07d}.jpg"] = {"size": 1, "mtime_ns": 0, "sha256": "0" * 64, "shard": name, "row": row}
    teacher = {"name": "ViT-L/14", "arch": "ViT-L-14-quickgelu", "weights": None, "weights_digest": "sha256:" + "0" * 64,
               "image_size": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    augmentation = {"scale": [0.08, 1.0], "ratio": [0.75, 4 / 3], "flip_probability": 0.5, "interpolation": "bicubic"}
    write_index(folder, {"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
                         "teacher": teacher, "augmentation": augmentation, "views": views, "seed": 1,
                         "feature_dim": width, "dtype": "float16", "files": files, "unreadable": {}, "shards": shards})
    return total


def time_cache(folder: Path, total: int, repeats: int) -> None:
    from caspl_plugin.cache.store import TeacherViewCache
    from caspl_plugin.clip import weights as weights_module

    first, cached, index_only = [], [], []
    for _ in range(repeats):
        weights_module._digest_cache.clear()
        started = time.perf_counter()
        TeacherViewCache.open(folder)
        first.append(time.perf_counter() - started)
        started = time.perf_counter()
        TeacherViewCache.open(folder)
        cached.append(time.perf_counter() - started)
        started = time.perf_counter()
        TeacherViewCache.open(folder, verify=False)
        index_only.append(time.perf_counter() - started)
    gb = total / 1e9
    first_s, cached_s, index_s = (statistics.median(v) for v in (first, cached, index_only))
    print(f"teacher-view cache, {total / 1e6:.0f} MB of shards:")
    print(f"  first open in a process (index + every shard's sha256, size, shapes): {first_s * 1e3:8.1f} ms "
          f"= {first_s * 1e3 / gb:6.0f} ms/GB")
    print(f"  again, digests cached per (path, size, mtime):                     {cached_s * 1e3:8.1f} ms")
    print(f"  index only (read, fields, content hash):                          {index_s * 1e3:8.1f} ms")


def time_onnx(path: Path, repeats: int, label: str) -> None:
    from caspl_plugin.export import OnnxClassifier
    from caspl_plugin.export.integrity import check_classifier_file, read_onnx_file

    def verify():
        check_classifier_file(read_onnx_file(path))

    verify()
    checks, loads = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        verify()
        checks.append(time.perf_counter() - started)
        started = time.perf_counter()
        OnnxClassifier(path)
        loads.append(time.perf_counter() - started)
    size = path.stat().st_size
    check, load = statistics.median(checks), statistics.median(loads)
    print(f"{label}, {size / 1e6:.1f} MB: verification {check * 1e3:.1f} ms per file ({check * 1e3 / (size / 1e9):.0f} ms/GB); "
          f"OnnxClassifier (verification + onnxruntime session) {load * 1e3:.0f} ms")


def export(folder: Path, backbone: str, classes: int) -> Path:
    from caspl_plugin.clip import create_clip
    from caspl_plugin.export.onnx_export import export_model
    from caspl_plugin.methods import get_method
    from caspl_plugin.prompts import PromptedCLIP

    torch.manual_seed(0)
    clip = PromptedCLIP(create_clip(backbone, "random"))
    model = get_method("coop")(clip, [f"class {i}" for i in range(classes)], n_ctx=4, ctx_init="").eval()
    path = folder / f"{backbone.replace('/', '-')}.onnx"
    started = time.perf_counter()
    export_model(model, path)
    print(f"(exported {backbone} with {classes} classes in {time.perf_counter() - started:.0f} s)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--views", type=int, default=20)
    parser.add_argument("--width", type=int, default=768, help="feature width (ViT-L/14: 768)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vit-b16", action="store_true", help="also export and verify a ViT-B/16 classifier (minutes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="caspl-bench-integrity-") as scratch:
        scratch = Path(scratch)
        total = write_cache(scratch / "cache", args.images, args.views, args.width)
        time_cache(scratch / "cache", total, args.repeats)
        time_onnx(export(scratch, "caspl-tiny-student", 10), args.repeats, "toy classifier (caspl-tiny-student, 10 classes)")
        if args.vit_b16:
            time_onnx(export(scratch, "ViT-B/16", 100), args.repeats, "ViT-B/16 classifier (100 classes)")


if __name__ == "__main__":
    main()
