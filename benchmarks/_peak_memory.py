"""Peak resident memory of the running benchmark, shared by the benchmark scripts (run them as scripts:
``python benchmarks/bench_x.py`` puts this folder on the import path)."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_mb() -> float:
    """Peak resident memory of this process in MB (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
