"""Timing calls and measuring peak memory in the current process (CPU and CUDA)."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import resource
import time
from collections.abc import Callable
from typing import Any

import torch

MIB = 2**20


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _release_free_heap() -> None:
    """glibc's malloc_trim(0): return free heap pages, also those inside the heap, to the
    system; other C libraries go without."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class PeakMemory:
    """Peak memory above the level at entry, in MiB (`.mib` after the block).

    CPU: the resident set's high-water mark, reset on entry where Linux allows it
    ("hwm_reset"); elsewhere the process's lifetime peak (ru_maxrss), which is exact only for
    the first, largest measurement ("ru_maxrss"). On entry the C allocator hands its free pages
    back to the system: memory freed earlier but still resident would otherwise be reused
    without raising the resident set, and the block's own allocations would go unseen.
    CUDA: max_memory_allocated.
    """

    def __init__(self, device: torch.device):
        self.device, self.mib, self.method = device, float("nan"), ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.method = "cuda_max_allocated"
            return self
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.method = "hwm_reset"
            self._base = _proc_status_kib("VmRSS") * 1024
        except OSError:
            self.method = "ru_maxrss"
            self._base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "hwm_reset":
            peak = _proc_status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.mib = max(peak - self._base, 0) / MIB


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int,
               device: torch.device) -> list[float]:
    """Seconds per call after `warmup` untimed calls; CUDA events on a GPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times
