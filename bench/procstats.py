"""What the benchmarks read of a process: CPU seconds, peak RSS, and a shell command's wall time."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

__all__ = ["cpu_s", "peak_rss_mib", "timed"]

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process so far (/proc/<pid>/stat utime and stime, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident set (VmHWM), in MiB; NaN if the kernel does not say."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(cmd: str) -> float:
    """Wall seconds of a bash command line (it must succeed)."""
    t = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, executable="/bin/bash")
    return time.perf_counter() - t
