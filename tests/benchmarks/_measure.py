"""Shared by the benchmarks: run a command in a child process, time it, read its peak RSS."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    label: str
    seconds: float
    peak_rss_mb: float


def measure(label: str, argv: list[str], env: dict[str, str] | None = None) -> Measurement:
    """Run `argv` to completion; wall time and the child's own peak RSS (wait4 rusage).

    Dirty pages left by earlier steps are flushed first (`sync`, untimed) so one step's
    writeback is not billed to the next. The parent must stay small: a forked child's peak
    RSS starts from the parent's.
    """
    os.sync()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label}: {' '.join(argv)} exited {proc.returncode}")
    return Measurement(label, seconds, usage.ru_maxrss / 1024)


def median_of(runs: int, label: str, make: Callable[[], Measurement], between: Callable[[], None]) -> Measurement:
    """Median wall time (and the largest peak RSS) of `runs` repetitions, `between` run after each."""
    results = []
    for _ in range(runs):
        results.append(make())
        between()
    results.sort(key=lambda m: m.seconds)
    return Measurement(label, results[len(results) // 2].seconds, max(m.peak_rss_mb for m in results))


def machine() -> str:
    cpus = os.cpu_count()
    with open("/proc/meminfo") as meminfo:
        mem_gb = int(meminfo.readline().split()[1]) / 1024 / 1024
    return f"{platform.machine()}, {cpus} CPUs, {mem_gb:.0f} GiB RAM, Python {platform.python_version()}"


def drop_dir(path: str) -> None:
    subprocess.run(["rm", "-rf", path], check=True)
