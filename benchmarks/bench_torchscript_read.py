"""Reading an OpenAI-layout TorchScript CLIP as data vs ``torch.jit.load``, and the artifact hash cost.

Builds a random ViT-B/16-sized CLIP in OpenAI's layout (fp16, as OpenAI ships it), traces it into a
TorchScript archive in a temporary folder, then times (best of ``--repeats``):

(a) ``read_torchscript`` (the package's reader: pickles and tensor records, no code run) vs
    ``torch.jit.load(...).state_dict()`` (torch's loader, which runs the archive's code; used here
    only as the reference);
(b) the content hash of a classifier-sized artifact over tensors only vs tensors + canonical metadata.

    python benchmarks/bench_torchscript_read.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from host_project.openai_clip import GEOMETRIES, CLIP, to_fp16  # noqa: E402

from caspl_plugin.artifacts.checkpoint_reader import read_torchscript  # noqa: E402
from caspl_plugin.artifacts.store import content_hash  # noqa: E402


def best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    model = to_fp16(CLIP(GEOMETRIES["ViT-B/16"]).eval())
    inputs = {"encode_image": torch.randn(1, 3, 224, 224).half(), "encode_text": torch.randint(0, 100, (1, 77))}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ViT-B-16.pt"
        torch.jit.save(torch.jit.trace_module(model, inputs, check_trace=False), str(path))
        size_mb = path.stat().st_size / 2**20
        ours = best(lambda: read_torchscript(path), args.repeats)
        jit = best(lambda: torch.jit.load(str(path), map_location="cpu").state_dict(), args.repeats)
        same = read_torchscript(path).state_dict
        reference = torch.jit.load(str(path), map_location="cpu").state_dict()
        assert list(same) == list(reference) and all(torch.equal(same[k], v) for k, v in reference.items())
    print(f"(a) ViT-B/16 TorchScript archive, {size_mb:.0f} MiB, {len(same)} tensors (state dicts equal)")
    print(f"    read_torchscript (data):  {ours * 1e3:8.1f} ms")
    print(f"    torch.jit.load+state_dict:{jit * 1e3:8.1f} ms   ratio {ours / jit:.2f}")

    tensors = {"ctx": torch.randn(8, 512), "text_features": torch.randn(1000, 512)}
    metadata = {"format": "caspl-classifier", "format_version": 2,
                "class_names": [f"class number {i}" for i in range(1000)], "student": {"name": "ViT-B/16"}}
    plain = best(lambda: content_hash(tensors), args.repeats * 5)
    canonical = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    covered = best(lambda: content_hash(tensors, metadata), args.repeats * 5)
    print(f"(b) content hash, {sum(t.numel() * 4 for t in tensors.values()) / 2**20:.1f} MiB tensors + "
          f"{len(canonical.encode()) / 1024:.1f} KiB metadata")
    print(f"    tensors only:        {plain * 1e3:8.2f} ms")
    print(f"    tensors + metadata:  {covered * 1e3:8.2f} ms   overhead {(covered - plain) * 1e3:+.2f} ms")


if __name__ == "__main__":
    main()
