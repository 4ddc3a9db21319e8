"""A service's CPU cores: on the CPU, `--device-group` names cores, and the service's threads
are pinned to them (affinity and thread count), so a verifier and a proposer on one machine
never compete for a core, as each owns its card or GPU elsewhere."""

from __future__ import annotations

import contextlib
import os


def available_cores() -> tuple[int, ...]:
    """Cores this process may run on (respects taskset/cgroup limits)."""
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def split_cores(cores: tuple[int, ...]) -> tuple[str, str]:
    """Disjoint device groups for a verifier and a proposer started side by side: the verifier
    (the larger model) takes the first half, rounded up; one shared core when there is one."""
    if len(cores) < 2:
        group = ",".join(map(str, cores)) or "0"
        return group, group
    half = (len(cores) + 1) // 2
    return ",".join(map(str, cores[:half])), ",".join(map(str, cores[half:]))


def pin_threads(cores: tuple[int, ...]) -> None:
    """Run this process's threads on these cores only, with one torch thread per core. Every
    thread already running is moved too (affinity is per thread on Linux: the engine loads on
    its own thread while gRPC's and the event loop's already run); later ones inherit it."""
    import torch

    allowed = available_cores()
    if not cores or not set(cores) <= set(allowed):
        raise ValueError(f"device group {','.join(map(str, cores))} names CPU cores this process "
                         f"cannot use (available: {','.join(map(str, allowed))})")
    if hasattr(os, "sched_setaffinity"):
        tasks = f"/proc/{os.getpid()}/task"
        for tid in (os.listdir(tasks) if os.path.isdir(tasks) else ["0"]):
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                os.sched_setaffinity(int(tid), cores)
    torch.set_num_threads(len(cores))
