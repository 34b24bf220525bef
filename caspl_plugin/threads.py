"""How many CPU threads torch computes with: the CPUs this process may use, less those busy right now.

torch's default (one thread per core) is right on an idle machine and a stall on a busy one: its
threads spin-wait on each other, and when other processes hold the cores every parallel region waits
for a descheduled thread. :func:`choose_threads` takes the CPUs in this process's affinity mask, the
processes running right now (the run queue, ``/proc/loadavg``) and the 1-minute load, and keeps
at least one thread; under ``torchrun`` the processes of one machine share what is free.
:func:`configure_threads` applies the choice (or an explicit ``--threads``) and logs it.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThreadChoice:
    """The threads chosen and why: CPUs usable, busy with other work, processes sharing them."""

    threads: int
    cpus: int
    busy: int
    local_processes: int = 1
    explicit: bool = False

    def describe(self) -> str:
        if self.explicit:
            return f"{self.threads} CPU thread(s) (as given; {self.cpus} CPU(s) usable, {self.busy} busy)"
        shared = f", shared by {self.local_processes} processes" if self.local_processes > 1 else ""
        return (f"{self.threads} CPU thread(s): {self.cpus} CPU(s) usable, {self.busy} busy with other work{shared} "
                "(set --threads or CASPL_THREADS to choose)")


def usable_cpus() -> int:
    """CPUs in this process's affinity mask (what a container or ``taskset`` allows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cpus(loadavg_text: Optional[str] = None) -> int:
    """CPUs busy with other work right now: the running processes except this one, capped by the
    1-minute load (a momentary burst does not count as load, nor does old load that has stopped)."""
    if loadavg_text is None:
        try:
            with open("/proc/loadavg", encoding="ascii") as handle:
                loadavg_text = handle.read()
        except OSError:
            try:
                return max(0, int(os.getloadavg()[0]))
            except (AttributeError, OSError):
                return 0
    fields = loadavg_text.split()
    try:
        load_1min = float(fields[0])
        running = int(fields[3].split("/")[0])
    except (IndexError, ValueError):
        return 0
    return max(0, min(running - 1, round(load_1min)))


def choose_threads(cpus: int, busy: int, local_processes: int = 1) -> int:
    """Threads for one process: the free CPUs shared by the local processes, at least one."""
    free = max(1, cpus - busy)
    return max(1, free // max(1, local_processes))


def configure_threads(threads: Optional[int] = None, *, local_processes: int = 1) -> ThreadChoice:
    """Set torch's intra-op threads to ``threads``, ``$CASPL_THREADS``, or the choice for this machine
    now; logs the choice and returns it."""
    import torch

    cpus, busy = usable_cpus(), busy_cpus()
    explicit = threads is not None
    if threads is None and os.environ.get("CASPL_THREADS", "").strip():
        threads, explicit = parse_threads(os.environ["CASPL_THREADS"], "CASPL_THREADS"), True
    if threads is None:
        threads = choose_threads(cpus, busy, local_processes)
    choice = ThreadChoice(threads, cpus, busy, local_processes, explicit)
    torch.set_num_threads(threads)
    logger.info("Computing with %s", choice.describe())
    return choice


def parse_threads(text: str, source: str = "--threads") -> int:
    """A thread count from text (``--threads``, ``CASPL_THREADS``): a positive int, named when not."""
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise ValueError(f"{source} expects a number of threads >= 1, got {text!r}")
    return value
