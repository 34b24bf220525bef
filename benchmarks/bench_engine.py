"""Benchmarks of the training engine (random/toy weights, nothing downloaded), printed side by side:

(a) one phase-1 step (tiny pair, global batch 8): 1 process vs 2 processes x 4 (torchrun, gloo on CPU;
    nccl with --device cuda and one GPU per process), median over --repeats steps;
(b) `caspl adapt` end to end on the toy domain (CoOp, 18 base classes, 2 shots, 2 epochs, evaluation).

    python benchmarks/bench_engine.py [--device cpu|cuda] [--repeats 10] [--skip-adapt]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def step_times(device: str, global_batch: int, repeats: int) -> list[float]:
    """Seconds per synced step of this process (one process, or one rank under torchrun)."""
    from caspl_plugin import distributed
    from caspl_plugin.boosting import BoostingConfig, build_distiller
    from caspl_plugin.clip import create_clip
    from caspl_plugin.engine import make_optimizer, synced_step

    dev = distributed.setup(torch.device(device))
    torch.manual_seed(0)
    student, teacher = create_clip("caspl-tiny-student", device=dev), create_clip("caspl-tiny-teacher", device=dev)
    distiller = build_distiller(student, teacher, [f"class {i}" for i in range(10)], config=BoostingConfig()).to(dev)
    optimizer = make_optimizer(distiller.student.learnable_parameters(), lr=0.0025)
    local = global_batch // distributed.world_size()
    images = torch.randn(local, 3, student.image_size, student.image_size, device=dev)
    times = []
    for i in range(repeats + 2):
        distributed.barrier()
        started = time.perf_counter()
        synced_step(distiller, images, None, optimizer, weight=1.0 / distributed.world_size())
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - started)
    distributed.cleanup()
    return times


def adapt_seconds() -> float:
    from caspl_plugin.cli import main as caspl
    from caspl_plugin.toy import domain

    with tempfile.TemporaryDirectory() as tmp:
        folder = domain.write_coop_layout(tmp, train_per_class=4, val_per_class=1, test_per_class=2) / "images"
        started = time.perf_counter()
        code = caspl(["adapt", "--data", str(folder), "--method", "coop", "--subsample", "base", "--shots", "2",
                      "--epochs", "2", "--batch-size", "8", "--student", "toy-student", "--no-progress",
                      "-o", str(Path(tmp) / "coop.safetensors")])
        if code != 0:
            raise SystemExit(f"caspl adapt failed with {code}")
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-adapt", action="store_true")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_worker:  # one rank of the torchrun measurement
        times = step_times(args.device, 8, args.repeats)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"RESULT {statistics.median(times)}")
        return
    single = statistics.median(step_times(args.device, 8, args.repeats))
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
         "--rank-worker", "--device", args.device, "--repeats", str(args.repeats)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))},
    )
    lines = [line for line in launched.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"torchrun run failed:\n{launched.stderr[-2000:]}")
    double = float(lines[0].split()[1])
    print(f"phase-1 step, tiny pair, global batch 8, {args.device}:")
    print(f"  1 process  x 8: {single * 1000:8.1f} ms")
    print(f"  2 processes x 4: {double * 1000:8.1f} ms  (x{single / double:.2f})")
    if not args.skip_adapt:
        print(f"caspl adapt end to end, toy domain (CoOp, 18 classes x 2 shots, 2 epochs, eval): {adapt_seconds():.1f} s")


if __name__ == "__main__":
    main()
