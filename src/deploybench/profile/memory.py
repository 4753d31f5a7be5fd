"""Peak memory of loading and running a variant.

CPU: growth of the resident set (RSS) from just before `load` to its high-water mark after the timed runs.
The high-water mark (VmHWM) is reset through /proc/self/clear_refs first, so the peak belongs to this
variant; the runner does this in a fresh child process per (variant, backend, batch size), so allocator caches
and libraries loaded for one variant never count for (or against) the next. GPU backends report
`torch.cuda.max_memory_allocated` instead.
"""

from __future__ import annotations

import resource
from pathlib import Path


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """`with PeakRSS() as m: ...` then `m.growth_bytes`: the peak RSS reached inside, minus the RSS at entry."""

    def __enter__(self) -> "PeakRSS":
        self.reset = _reset_peak()
        self.base = rss_bytes()
        self.growth_bytes = None
        return self

    def __exit__(self, *exc) -> None:
        # Without the reset, the high-water mark may predate entry: then only the growth of the current RSS is
        # known, a lower bound.
        peak = _peak_bytes() if self.reset else max(rss_bytes(), self.base)
        self.growth_bytes = max(0, peak - self.base)
