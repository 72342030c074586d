"""How many CPU cores onnxruntime sessions of this process should use."""

from __future__ import annotations

import os


def usable_cores(cap: int = 4) -> int:
    """The cores this process may run on (its affinity mask, e.g. under ``taskset`` or a CI
    runner's cpuset), at most ``cap``. ``os.cpu_count()`` counts the whole machine: on a
    16-core host pinned to 2 cores it would oversubscribe them, and an intra-op thread pool
    whose threads share a core waits on the slowest of them at every operator."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    return max(1, min(cap, count))
