"""Busy machines: ``caspl demo --quick`` and a ViT-B/16 phase-1 step, on an idle machine and beside
1x and 4x as many busy processes as CPUs, before (torch's default: one thread per CPU) and after
(the thread choice of :mod:`caspl_plugin.threads`). Each run is its own process; a run is stopped
after ``--cap`` seconds and reported as such.

    python benchmarks/bench_busy.py [--loads 0 1 4] [--cap 300] [--skip-step] [--skip-demo]

Target: the demo beside 4 busy processes per CPU takes at most 10x its idle time (after).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _spin() -> None:
    while True:
        pass


def _start_load(processes: int) -> list:
    workers = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(processes)]
    for worker in workers:
        worker.start()
    time.sleep(3.0 if processes else 0.0)  # let the run queue and the load average see them
    return workers


def _stop_load(workers) -> None:
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.join()


def _timed(command: list[str], env: dict, cap: float) -> str:
    started = time.perf_counter()
    try:
        subprocess.run(command, env=env, check=True, timeout=cap, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f">{cap:.0f} s (stopped)"
    return f"{time.perf_counter() - started:.1f} s"


def _env(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CASPL_THREADS")}
    env["HF_HUB_OFFLINE"] = "1"
    if mode == "before":  # torch's default: one thread per CPU, whatever else runs
        env["CASPL_THREADS"] = str(CPUS)
    return env


def step_worker() -> None:
    """Child: two timed phase-1 steps (ViT-B/16 student, 8+8 boosting tokens at depth 12, teacher
    features from memory, 37 classes, batch 4) after one warm-up; prints the seconds per step."""
    import torch
    import torch.nn.functional as F

    from bench_scale import random_text_tower  # benchmarks/bench_scale.py
    from caspl_plugin.boosting.model import BoostingConfig, BoostingDistiller, ZeroShotTeacher, boosting_student, make_boosting_group
    from caspl_plugin.clip import create_clip
    from caspl_plugin.engine import make_optimizer, training_step
    from caspl_plugin.prompts import PromptedCLIP
    from caspl_plugin.threads import configure_threads

    configure_threads()
    torch.manual_seed(0)
    clip = PromptedCLIP(create_clip("ViT-B/16", weights="random"))
    names = [f"class {i}" for i in range(37)]
    group = make_boosting_group(clip, BoostingConfig(), generator=torch.Generator().manual_seed(0))
    student = boosting_student(clip, names, group)
    teacher = ZeroShotTeacher(random_text_tower("caspl-tiny-teacher", "cpu"), names, image_tower=False)
    distiller = BoostingDistiller(student, teacher)
    optimizer = make_optimizer(student.learnable_parameters(), 1e-4)
    images = torch.randn(4, 3, 224, 224)
    features = F.normalize(torch.randn(4, teacher.text_features.shape[-1]), dim=-1)
    training_step(distiller, images, None, optimizer, teacher_features=features)
    started = time.perf_counter()
    for _ in range(2):
        training_step(distiller, images, None, optimizer, teacher_features=features)
    print(f"{(time.perf_counter() - started) / 2:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, nargs="+", default=[0, 1, 4], help="busy processes per CPU")
    parser.add_argument("--cap", type=float, default=300.0, help="seconds before a run is stopped")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return step_worker()
    print(f"{CPUS} CPU(s); each row: before (torch's default threads) | after (caspl's choice)")
    for load in args.loads:
        workers = _start_load(load * CPUS)
        try:
            cells = []
            if not args.skip_demo:
                with tempfile.TemporaryDirectory() as out:
                    for mode in ("before", "after"):
                        demo = [sys.executable, "-m", "caspl_plugin.cli", "demo", "--quick", "--no-progress", "--out", out]
                        cells.append(f"demo --quick {mode} {_timed(demo, _env(mode), args.cap)}")
            if not args.skip_step:
                for mode in ("before", "after"):
                    step = [sys.executable, __file__, "--worker"]
                    try:
                        out = subprocess.run(step, env=_env(mode), check=True, timeout=args.cap, capture_output=True, text=True)
                        cells.append(f"ViT-B/16 phase-1 step {mode} {out.stdout.strip().splitlines()[-1]} s")
                    except subprocess.TimeoutExpired:
                        cells.append(f"ViT-B/16 phase-1 step {mode} >{args.cap:.0f} s (stopped)")
            print(f"  {load} busy process(es) per CPU ({load * CPUS} in all): " + " | ".join(cells), flush=True)
        finally:
            _stop_load(workers)


if __name__ == "__main__":
    main()
