"""Shared by the benchmarks: the machine a figure came from (every figure names its machine) and how a
call is timed (wall and CPU seconds, workers included)."""

from __future__ import annotations

import platform
import resource
import time
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform knows, else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (hashing and mask-decoding workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(func: Any, *args: Any, **kwargs: Any) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process and its children, result) of one call."""
    w0, c0 = time.perf_counter(), cpu_seconds()
    result = func(*args, **kwargs)
    return time.perf_counter() - w0, cpu_seconds() - c0, result
