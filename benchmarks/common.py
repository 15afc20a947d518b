"""What every benchmark records beside its numbers: the machine and the library versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f")


def _cpuinfo() -> tuple[list[str], list[str]]:
    """(``model name`` of each logical CPU, the first ``flags`` line's flags) from /proc/cpuinfo;
    both empty where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return [], []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return names, flags


def _memory_gib() -> Optional[float]:
    """Total memory in GiB (``MemTotal`` of /proc/meminfo, else psutil), or None."""
    try:
        with open("/proc/meminfo") as handle:
            total_kib = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
        return round(total_kib / 2**20, 1)
    except (OSError, StopIteration, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return round(psutil.virtual_memory().total / 2**30, 1)


def machine() -> dict[str, Any]:
    """The machine a benchmark runs on: platform, Python, CPU model, counts and SIMD flags,
    memory, and the load average (1, 5, 15 min) when called (benchmarks share machines)."""
    names, flags = _cpuinfo()
    try:
        usable: Optional[int] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": names[0] if names else "unknown",
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "logical_cpus_in_cpuinfo": len(names),
        "simd": [flag for flag in SIMD_FLAGS if flag in flags],
        "memory_gib": _memory_gib(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions(packages: Sequence[str]) -> dict[str, Optional[str]]:
    """The Python version and each installed distribution's version (None if absent)."""
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
