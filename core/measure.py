"""Wall time and peak memory of a block of work, for the cost columns of score tables."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Cost:
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    memory_kind: str = ""  # "cuda_allocated" (torch's peak on the GPU) or "process_rss" (CPU)


def _reset_rss_peak() -> bool:
    # Linux >= 4.0 resets VmHWM (the peak resident set) when "5" is written to clear_refs.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource  # not on Windows; there the peak is unknown

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def measure(device: torch.device | str):
    """Yield a :class:`Cost` filled in when the block ends.

    On CUDA the peak is torch's allocated memory during the block; on CPU it is the process's
    peak resident memory during the block (reset at entry where Linux allows, else since start).
    """
    cost = Cost()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        _reset_rss_peak()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            cost.peak_memory_mb = torch.cuda.max_memory_allocated(dev) / 2**20
            cost.memory_kind = "cuda_allocated"
        else:
            cost.peak_memory_mb = _rss_peak_mb()
            cost.memory_kind = "process_rss"
        cost.seconds = time.perf_counter() - start
