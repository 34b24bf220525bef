"""What a run costs, per dataset of the paper (random weights, nothing downloaded).

For each benchmark dataset, at its class count, one training step of each phase is measured on this
machine: the median time (``--repeats`` steps after one warm-up) and the floating-point operations of
the step (torch's ``FlopCounterMode``, forward + backward + the optimizer; 2 FLOPs per multiply-add),
and the whole run is computed from them:

- phase 1, ViT-B/16 student (8 + 8 boosting tokens, depth 12) + ViT-L/14 teacher, the authors'
  recipe: 20 epochs over the whole train split, batch 4 (ImageNet: batch 128); the teacher's image
  features ``online`` (its image tower runs every step) or ``cached`` (read from a teacher-view cache);
- phase 2, CasPL_PromptSRC (preset ``caspl_base2novel``: 8 + 8 adapting tokens at depth 12 over the
  frozen boosting prompts), base-to-novel: 16 shots of the base classes, 20 epochs, batch 4.

A step's FLOPs are ``batch x per-image + per-step`` (the class text features are computed once per
step, whatever the batch): both parts are measured (steps at batch ``B`` and ``2B``), which gives
ImageNet's batch-128 phase-1 step exactly, and its time by the same split of the measured times.
On a CPU the GPU column divides the FLOPs by ``--assumed-tflops`` (an assumption, printed with the
table); with ``--device cuda`` the steps are timed on the GPU (``--precision amp`` as the authors ran).

The counter sees what the step runs: nn.MultiheadAttention's inference fast path (one fused op the
counter does not know) is switched off while counting, and CPU attention is counted with torch's
own attention formula. Evaluation passes are not counted.

    python benchmarks/bench_cost.py [--datasets OxfordPets ImageNet ...] [--repeats 3] [--threads N]
        [--device cpu|cuda] [--precision fp32|amp|bf16|fp16] [--assumed-tflops 100] [--memory] [--quick]

``--memory`` also measures each step's peak memory (resident on a CPU, allocated on CUDA), one process
per step and dataset.
``--quick`` uses the tiny pair and three datasets (seconds; for testing the script).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils import flop_counter  # noqa: E402

from caspl_plugin.boosting import BoostingConfig, build_distiller, make_boosting_group  # noqa: E402
from caspl_plugin.clip import create_clip  # noqa: E402
from caspl_plugin.engine import make_optimizer, training_step  # noqa: E402
from caspl_plugin.methods import get_method, get_preset  # noqa: E402
from caspl_plugin.prompts import PromptedCLIP  # noqa: E402
from bench_scale import random_text_tower  # noqa: E402  (benchmarks/bench_scale.py)
from bench_text import class_names  # noqa: E402  (benchmarks/bench_text.py: 1-3 word names)
from timing import interleaved, peak_rss_mib  # noqa: E402  (benchmarks/timing.py)

#: train-split images and classes of each dataset (CoOp's splits; ImageNet: the full train set)
DATASETS = {
    "ImageNet": (1281167, 1000), "Caltech101": (4128, 100), "OxfordPets": (2944, 37),
    "StanfordCars": (6509, 196), "OxfordFlowers": (4093, 102), "Food101": (50500, 101),
    "FGVCAircraft": (3334, 100), "SUN397": (15880, 397), "DescribableTextures": (2820, 47),
    "EuroSAT": (13500, 10), "UCF101": (7639, 101),
}
QUICK = {"OxfordPets": (2944, 37), "EuroSAT": (13500, 10), "SUN397": (15880, 397)}
EPOCHS, PHASE1_BATCH, IMAGENET_BATCH, SHOTS = 20, 4, 128, 16
PHASE2_PRESET = ("promptsrc", "caspl_base2novel")
STEPS = ("phase1_online", "phase1_cached", "phase2")


def register_cpu_attention() -> None:
    """Count CPU attention (aten's flash kernel for CPU) with torch's formula for the CUDA kernels."""
    aten = torch.ops.aten
    forward, backward = aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention_for_cpu_backward
    if forward in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(forward)
    def _forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    @flop_counter.register_flop_formula(backward)
    def _backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn) -> int:
    register_cpu_attention()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused inference op is invisible to the counter
    try:
        with flop_counter.FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops()


def models(quick: bool):
    return ("caspl-tiny-student", "caspl-tiny-teacher") if quick else ("ViT-B/16", "ViT-L/14")


def build_steps(names, classes: int, batch: int, which=STEPS, device="cpu", precision="fp32") -> dict:
    """step name -> a function running one training step at ``batch`` images."""
    student_name, teacher_name = names
    device = torch.device(device)
    torch.manual_seed(0)
    student = create_clip(student_name, "random", device=device)
    steps = {}
    size = student.image_size
    images = torch.randn(batch, 3, size, size, device=device)
    if "phase1_online" in which or "phase1_cached" in which:
        online = "phase1_online" in which
        # a cached run builds the teacher's text tower only (its image tower never exists)
        teacher = create_clip(teacher_name, "random", device=device) if online else random_text_tower(teacher_name, device)
        distiller = build_distiller(student, teacher, class_names(classes), config=BoostingConfig(),
                                    teacher_image_tower=online).to(device)
        del teacher
        optimizer = make_optimizer(distiller.student.learnable_parameters(), 1e-4)
        features = F.normalize(torch.randn(batch, distiller.teacher.text_features.shape[-1], device=device), dim=-1)
        if online:
            steps["phase1_online"] = lambda: training_step(distiller, images, None, optimizer, precision)
        if "phase1_cached" in which:
            steps["phase1_cached"] = lambda: training_step(distiller, images, None, optimizer, precision, teacher_features=features)
    if "phase2" in which:
        base = math.ceil(classes / 2)
        preset = get_preset(*PHASE2_PRESET)
        clip = PromptedCLIP(student)
        group = make_boosting_group(clip, BoostingConfig(ctx_init=""), learnable=False, generator=torch.Generator().manual_seed(1))
        model = get_method(PHASE2_PRESET[0])(clip, class_names(base), boosting=group, **preset.model).to(device)
        optimizer = make_optimizer(model.learnable_parameters(), 1e-4)
        labels = torch.arange(batch, device=device) % base
        steps["phase2"] = lambda: training_step(model, images, labels, optimizer, precision)
    return steps


def run_dataset(name, images, classes, args) -> dict:
    """Per-image and per-step FLOPs and seconds of each step (phase 1 at batch B and 2B)."""
    names = models(args.quick)
    b = PHASE1_BATCH
    result = {"dataset": name, "images": images, "classes": classes}
    small = build_steps(names, classes, b, device=args.device, precision=args.precision)
    large = build_steps(names, classes, 2 * b, which=("phase1_online", "phase1_cached"), device=args.device, precision=args.precision)
    times = interleaved({**small, **{f"{k}@2b": v for k, v in large.items()}}, args.device, args.repeats)
    for step in STEPS:
        flops = count_flops(small[step])
        result[step] = {"batch": b, "seconds": times[step], "flops": flops}
        if step in large:
            flops2 = count_flops(large[step])
            per_image, per_step = (flops2 - flops) / b, 2 * flops - flops2
            t_image, t_step = (times[f"{step}@2b"] - times[step]) / b, 2 * times[step] - times[f"{step}@2b"]
            result[step].update(flops_per_image=per_image, flops_per_step=per_step,
                                seconds_per_image=t_image, seconds_per_step=t_step)
    return result


def memory_worker(step, classes, args) -> None:
    fn = build_steps(models(args.quick), classes, PHASE1_BATCH, which=(step,), device=args.device, precision=args.precision)[step]
    for _ in range(2):
        fn()
    if torch.device(args.device).type == "cuda":
        print(json.dumps({"rss_mib": torch.cuda.max_memory_allocated() / 2**20}))
    else:
        print(json.dumps({"rss_mib": peak_rss_mib()}))


def measure_memory(step, classes, args) -> float:
    command = [sys.executable, __file__, "--memory-worker", step, str(classes), "--device", args.device,
               "--precision", args.precision] + (["--quick"] if args.quick else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["rss_mib"]


def run_cost(result, step, batch) -> tuple[int, float, float]:
    """(steps, CPU seconds, FLOPs) of the whole run of ``step`` at ``batch``."""
    r = result[step]
    if step == "phase2":
        steps = EPOCHS * math.ceil(SHOTS * math.ceil(result["classes"] / 2) / batch)
        return steps, steps * r["seconds"], steps * r["flops"]
    steps = EPOCHS * (result["images"] // batch)
    if batch == r["batch"]:
        return steps, steps * r["seconds"], steps * r["flops"]
    seconds = batch * r["seconds_per_image"] + r["seconds_per_step"]
    flops = batch * r["flops_per_image"] + r["flops_per_step"]
    return steps, steps * seconds, steps * flops


def human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def print_tables(results, args) -> None:
    tflops = args.assumed_tflops * 1e12
    on_gpu = torch.device(args.device).type == "cuda"
    where = torch.cuda.get_device_name() if on_gpu else f"{torch.get_num_threads()} CPU threads"
    print(f"\nPer step, measured ({where}, {args.precision}; FLOPs forward + backward):")
    print("| dataset | classes | phase-1 online, batch 4 | phase-1 cached, batch 4 | phase 2, batch 4 |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        cells = [f"{r[s]['seconds']:.2f} s, {r[s]['flops'] / 1e9:.0f} GFLOP" for s in STEPS]
        print(f"| {r['dataset']} | {r['classes']} | " + " | ".join(cells) + " |")
    print("\nPer image / per step parts of a phase-1 step (from batch 4 and 8):")
    print("| dataset | online: GFLOP/image | online: GFLOP/step (text) | cached: GFLOP/image | cached: GFLOP/step (text) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        on, ca = r["phase1_online"], r["phase1_cached"]
        print(f"| {r['dataset']} | {on['flops_per_image'] / 1e9:.1f} | {on['flops_per_step'] / 1e9:.1f} | "
              f"{ca['flops_per_image'] / 1e9:.1f} | {ca['flops_per_step'] / 1e9:.1f} |")
    measured = "GPU" if on_gpu else "CPU"
    print(f"\nWhole runs ({measured}: steps x measured step; GPU est.: FLOPs / {args.assumed_tflops:g} TFLOP/s assumed):")
    print(f"| dataset | train images | classes | phase 1 steps | phase 1 {measured} (online) | phase 1 GPU est. (online) "
          f"| phase 1 GPU est. (cached) | phase 2 steps | phase 2 {measured} | phase 2 GPU est. |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        batch = IMAGENET_BATCH if r["dataset"] == "ImageNet" else PHASE1_BATCH
        steps1, cpu1, flops1 = run_cost(r, "phase1_online", batch)
        _, _, flops1c = run_cost(r, "phase1_cached", batch)
        steps2, cpu2, flops2 = run_cost(r, "phase2", PHASE1_BATCH)
        print(f"| {r['dataset']} | {r['images']:,} | {r['classes']} | {steps1:,} | {human(cpu1)} | {human(flops1 / tflops)} | "
              f"{human(flops1c / tflops)} | {steps2:,} | {human(cpu2)} | {human(flops2 / tflops)} |")
    if any("memory" in r for r in results):
        print(f"\nPeak {'allocated CUDA' if on_gpu else 'resident'} memory of a process running the step (MiB, batch 4):")
        print("| dataset | phase-1 online | phase-1 cached | phase 2 |")
        print("|---|---:|---:|---:|")
        for r in results:
            print(f"| {r['dataset']} | " + " | ".join(f"{r['memory'][s]:.0f}" for s in STEPS) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), help="default: all eleven")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "amp", "bf16", "fp16"))
    parser.add_argument("--assumed-tflops", type=float, default=100.0, help="sustained GPU throughput assumed for the estimate")
    parser.add_argument("--memory", action="store_true", help="peak resident memory per step, one process each")
    parser.add_argument("--quick", action="store_true", help="tiny pair, three datasets")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--memory-worker", nargs=2, metavar=("STEP", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args.memory_worker[0], int(args.memory_worker[1]), args)
        return
    chosen = QUICK if args.quick else {name: DATASETS[name] for name in (args.datasets or DATASETS)}
    results = []
    started = time.perf_counter()
    for name, (images, classes) in chosen.items():
        result = run_dataset(name, images, classes, args)
        if args.memory:
            result["memory"] = {step: measure_memory(step, classes, args) for step in STEPS}
        results.append(result)
        print(f"  {name}: measured ({time.perf_counter() - started:.0f} s so far)", flush=True)
    print_tables(results, args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump({"device": args.device, "precision": args.precision, "threads": torch.get_num_threads(),
                       "assumed_tflops": args.assumed_tflops, "results": results}, file, indent=1)


if __name__ == "__main__":
    main()
