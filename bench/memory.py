"""Peak memory of a server process tree, sampled on a background thread.

Two sums over the tree: RSS, and PSS (proportional set size: a page shared by n processes counts
1/n in each). RSS double-counts what worker processes share (the Python interpreter, numpy's and
pydicom's libraries mapped from the same files); PSS is what the tree takes from the machine, and
for a single process it is its RSS less the pages it shares with the rest of the system.
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil


def tree_memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes of a process plus all its descendants ((0, 0) if it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = pss = 0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += info.pss
    return rss, pss


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (0 if it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


class RssSampler:
    """`with RssSampler(pid) as s: ...` then `s.peak` (RSS), `s.peak_pss`, `s.start_rss`,
    `s.start_pss`, `s.samples` (every `interval` s)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.start_rss = self.start_pss = 0
        self.peak = self.peak_pss = 0
        self.end_rss = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> tuple[int, int]:
        rss, pss = tree_memory(self.pid)
        self.samples += 1
        self.peak = max(self.peak, rss)
        self.peak_pss = max(self.peak_pss, pss)
        return rss, pss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self.start_rss, self.start_pss = self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.end_rss = self._sample()[0]
