"""Scale benchmarks of the teacher-view cache (random weights, nothing downloaded), side by side:

(a) one phase-1 step: online teacher vs cached views vs the student alone (forward + backward),
    ViT-B/16 student + ViT-L/14 teacher, 10 classes, batch 4 (and more with ``--batch 4 32``).
    Targets: cached <= 1.10 x student-only; online / cached >= 1.8 on CPU.
(b) peak resident memory (ru_maxrss) of an online run, a cached run and the student alone, each in
    its own process. Target: cached <= student-only + 15 %.
(c) cache precompute throughput (images/s of teacher work) with 1 and 2 processes (torchrun, gloo on
    CPU, nccl on CUDA) and the scaling efficiency; the cache's bytes per image per view.

    python benchmarks/bench_scale.py [--quick] [--device cpu|cuda] [--batch 4 32] [--repeats 3]
        [--images 8] [--skip-memory] [--skip-precompute]

``--quick`` uses the tiny pair (caspl-tiny-student / caspl-tiny-teacher) and finishes in seconds.
The perf branch's block-layout / reference-implementation comparison can be added as one more
section by importing its benchmark module here.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from caspl_plugin.boosting import BoostingConfig, build_distiller, kd_loss  # noqa: E402
from caspl_plugin.boosting.teacher import TextOnlyCLIP, TextTower  # noqa: E402
from caspl_plugin.clip import WeightsSource, create_clip  # noqa: E402
from caspl_plugin.engine import make_optimizer, training_step  # noqa: E402
from timing import interleaved, peak_rss_mib  # noqa: E402  (benchmarks/timing.py)

LARGE = ("ViT-B/16", "ViT-L/14")
TINY = ("caspl-tiny-student", "caspl-tiny-teacher")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()



def random_text_tower(name: str, device) -> TextTower:
    """A random-weight text tower alone (what a cached run builds; the image tower never exists)."""
    import open_clip

    from caspl_plugin.clip.factory import _tokenizer
    from caspl_plugin.clip.names import resolve_model_name

    arch = resolve_model_name(name)
    cfg = open_clip.get_model_config(arch)
    text = open_clip.model._build_text_tower(cfg["embed_dim"], cfg["text_cfg"], bool(cfg.get("quick_gelu", False)), None)
    model = TextOnlyCLIP(text, torch.tensor(4.6052)).eval().requires_grad_(False).to(device)
    return TextTower(name, arch, model, _tokenizer(arch), WeightsSource("random"), "random")


def class_names(n: int) -> list[str]:
    return [f"class {i}" for i in range(n)]


def build(mode: str, names, device, classes: int):
    """(distiller, embed_dim) for ``online`` / ``cached`` / ``student``; the teacher's text tower is dropped."""
    from caspl_plugin.boosting import ZeroShotTeacher

    student_name, teacher_name = names
    torch.manual_seed(0)
    if mode == "online":
        teacher = create_clip(teacher_name, "random", device=device)
    else:  # the class features first, then the text tower is gone before the student exists
        tower = random_text_tower(teacher_name, device)
        teacher = ZeroShotTeacher(tower, class_names(classes), image_tower=False)
        del tower
    student = create_clip(student_name, "random", device=device)
    distiller = build_distiller(student, teacher, class_names(classes), config=BoostingConfig(),
                                teacher_image_tower=mode == "online").to(device)
    dim = int(distiller.teacher.text_features.shape[-1])
    del teacher
    return distiller, student.image_size, dim


def step_functions(distiller, image_size, dim, device, batch):
    optimizer = make_optimizer(distiller.student.learnable_parameters(), 1e-4)
    images = torch.randn(batch, 3, image_size, image_size, device=device)
    features = F.normalize(torch.randn(batch, dim, device=device), dim=-1)
    fixed = torch.randn(batch, len(distiller.student.class_names), device=device)

    def online():
        training_step(distiller, images, None, optimizer)

    def cached():
        training_step(distiller, images, None, optimizer, teacher_features=features)

    def student_only():
        loss = kd_loss(distiller.student(images), fixed)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return {"online": online, "cached": cached, "student": student_only}


def bench_steps(names, device, batches, repeats, classes):
    print(f"\n(a) phase-1 step, {names[0]} student + {names[1]} teacher, {classes} classes, {device}")
    distiller, size, dim = build("online", names, device, classes)
    for batch in batches:
        fns = step_functions(distiller, size, dim, device, batch)
        times = interleaved(fns, device, repeats)
        print(f"  batch {batch:3d}: online {times['online'] * 1e3:9.1f} ms | cached {times['cached'] * 1e3:9.1f} ms | "
              f"student-only {times['student'] * 1e3:9.1f} ms")
        print(f"             cached / student-only = {times['cached'] / times['student']:.3f} (target <= 1.10); "
              f"online / cached = {times['online'] / times['cached']:.2f} (target >= 1.8)")


def memory_worker(mode, names, device, batch, steps, classes):
    """Child process: a few training steps of ``mode``; prints the peak RSS as JSON."""
    distiller, size, dim = build(mode, names, device, classes)
    fn = step_functions(distiller, size, dim, device, batch)[mode]
    for _ in range(steps):
        fn()
    peak = peak_rss_mib()
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    print(json.dumps({"mode": mode, "rss_mib": peak, "cuda_mib": cuda}))


def bench_memory(args, names, device):
    print(f"\n(b) peak resident memory, batch {args.batch[0]}, {args.memory_steps} steps, each mode in its own process")
    results = {}
    for mode in ("student", "cached", "online"):
        command = [sys.executable, __file__, "--memory-worker", mode, "--device", str(device), "--batch", str(args.batch[0]),
                   "--memory-steps", str(args.memory_steps), "--classes", str(args.classes)] + (["--quick"] if args.quick else [])
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
        extra = f", CUDA peak {results[mode]['cuda_mib']:.0f} MiB" if results[mode]["cuda_mib"] is not None else ""
        print(f"  {mode:8s}: {results[mode]['rss_mib']:8.0f} MiB{extra}")
    ratio = results["cached"]["rss_mib"] / results["student"]["rss_mib"]
    print(f"  cached / student-only = {ratio:.3f} (target <= 1.15); online / cached = "
          f"{results['online']['rss_mib'] / results['cached']['rss_mib']:.2f}")


def write_images(folder: Path, count: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        w, h = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return sorted(folder.glob("*.jpg"))


def precompute_worker(args, names, device):
    """One process of the precompute (alone or under torchrun): times the teacher work of its shards."""
    from caspl_plugin import distributed
    from caspl_plugin.cache import build_teacher_cache
    from caspl_plugin.cache import precompute as precompute_module

    device = distributed.setup(device)
    world = distributed.world_size()
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    images = Path(args.precompute_worker)
    files = sorted(images.glob("*.jpg"))
    torch.manual_seed(1)
    teacher = create_clip(names[1], "random", device=device)
    with torch.no_grad():  # warm-up: the first forward pays one-time allocation costs
        size = teacher.model.visual.image_size
        teacher.model.encode_image(torch.zeros(1, 3, *(size if isinstance(size, (tuple, list)) else (size, size)), device=device))
    spent = [0.0]
    original = precompute_module._compute_shard

    def timed_shard(*a):
        start = time.perf_counter()
        result = original(*a)
        spent[0] += time.perf_counter() - start
        return result

    precompute_module._compute_shard = timed_shard
    started = time.perf_counter()
    build_teacher_cache(images.parent / f"cache-{world}", files, images, teacher, views=args.views, seed=1,
                        shard_size=max(1, len(files) // (4 * world)), batch_size=16, device=device)
    total = time.perf_counter() - started
    print(json.dumps({"rank": distributed.rank(), "world": world, "teacher_seconds": spent[0], "total_seconds": total}))
    distributed.cleanup()


def bench_precompute(args, names, device):
    print(f"\n(c) cache precompute, {names[1]} teacher, {args.images} images x {args.views} view(s), {device}")
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        write_images(images, args.images)
        base = [__file__, "--precompute-worker", str(images), "--device", str(device), "--views", str(args.views)] + (["--quick"] if args.quick else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 2))}
        rates = {}
        for world in (1, 2):
            launcher = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world)]
            out = subprocess.run(launcher + base, capture_output=True, text=True, env=env, check=True).stdout
            ranks = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            teacher_s = max(r["teacher_seconds"] for r in ranks)
            total_s = max(r["total_seconds"] for r in ranks)
            rates[world] = args.images * args.views / teacher_s
            print(f"  {world} process(es): {rates[world]:7.2f} views/s of teacher work ({teacher_s:.1f} s); "
                  f"end to end {total_s:.1f} s (weights digest, file digests, index)")
        print(f"  scaling efficiency 2 processes: {rates[2] / (2 * rates[1]) * 100:.0f} %")
        cache = Path(tmp) / "images" / ".." / "cache-1"
        index = json.loads((cache / "index.json").read_text())
        size = sum(p.stat().st_size for p in (cache / "shards").glob("*.safetensors"))
        per_view = size / (len(index["files"]) * index["views"])
        print(f"  cache size: {per_view:.0f} bytes per image per view ({index['feature_dim']} x fp16 features + box + flip "
              f"= {index['feature_dim'] * 2 + 17} bytes of payload; the rest is shard headers)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=8, help="images for the precompute benchmark")
    parser.add_argument("--views", type=int, default=1, help="views per image for the precompute benchmark")
    parser.add_argument("--memory-steps", type=int, default=2)
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-precompute", action="store_true")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    parser.add_argument("--precompute-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    names = TINY if args.quick else LARGE
    device = torch.device(args.device)
    if args.memory_worker:
        return memory_worker(args.memory_worker, names, device, args.batch[0], args.memory_steps, args.classes)
    if args.precompute_worker:
        return precompute_worker(args, names, device)
    print(f"bench_scale: torch {torch.__version__}, {os.cpu_count()} CPU threads, models {names}")
    if not args.skip_steps:
        bench_steps(names, device, args.batch, args.repeats, args.classes)
    if not args.skip_memory:
        bench_memory(args, names, device)
    if not args.skip_precompute:
        bench_precompute(args, names, device)


if __name__ == "__main__":
    main()
