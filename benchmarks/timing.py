"""Timing shared by the benchmark scripts: medians of functions measured in alternation."""
import resource
import statistics
import time

import torch


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, device, repeats: int) -> dict:
    """Median seconds of each function, measured in alternation after one warm-up each (fair under
    machine noise: a slow moment hits every function alike)."""
    for fn in fns.values():
        fn()
    synchronize(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_rss_mib() -> float:
    """This process's own peak RSS. /proc's VmHWM starts afresh at exec; ru_maxrss does not on Linux
    (a child spawned by a large parent reports the parent's peak), so it is only the fallback."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
