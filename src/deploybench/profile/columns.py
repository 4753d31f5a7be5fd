"""The columns of a comparison row, each defined once: the CLI table, Markdown, CSV/JSON and the HTML report all
render from `COLUMNS`, so a value is shown the same way everywhere.

Stored units: accuracy is a fraction (0.9108, shown 91.08), `pct_of_peak` already a percentage (38.3, shown as
is), sizes and memory bytes (shown in KB/MB/GB, 1024-based, one decimal), MACs and parameters counts (shown
with K/M/G). A missing value (None) is shown as "-" by every formatter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

MISSING = "-"


def fmt_text(value) -> str:
    return MISSING if value is None else str(value)


def fmt_fraction_pct(value) -> str:
    """A fraction (0.9108) as a percentage with two decimals ("91.08")."""
    return MISSING if value is None else f"{100 * value:.2f}"


def fmt_fraction_points(value) -> str:
    """A change of a fraction (-0.0012) as signed percentage points ("-0.12")."""
    return MISSING if value is None else f"{100 * value:+.2f}"


def fmt_pct(value) -> str:
    """A value that is already a percentage (38.3), one decimal."""
    return MISSING if value is None else f"{value:.1f}"


def fmt_bytes(value) -> str:
    """Bytes in B/KB/MB/GB (1024-based), one decimal above B."""
    if value is None:
        return MISSING
    n = float(value)
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_count(value) -> str:
    """A count (parameters, MACs) with a K/M/G suffix and two decimals; below 1000 as is."""
    if value is None:
        return MISSING
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if value >= div:
            return f"{value / div:.2f}{unit}"
    return str(value)


def fmt_ms(value) -> str:
    return MISSING if value is None else f"{value:.3f}"


def fmt_interval_ms(value) -> str:
    """A [low, high] interval in ms ("[0.981, 1.020]")."""
    return MISSING if not value else f"[{value[0]:.3f}, {value[1]:.3f}]"


def fmt_rate(value) -> str:
    return MISSING if value is None else f"{value:.1f}"


def fmt_speedup(value) -> str:
    return MISSING if value is None else f"{value:.2f}×"


def fmt_id(value) -> str:
    """A variant id, shortened to the 8 characters that identify it in practice (prefixes are accepted)."""
    return MISSING if value is None else str(value)[:8]


def fmt_flags(value) -> str:
    return MISSING if value is None else ", ".join(value)


FLAG_PARETO, FLAG_NO_SPEEDUP, FLAG_UNSTABLE = "pareto", "no real speed-up", "unstable"


def row_flags(row: dict) -> list[str]:
    """The flags of a comparison row: on the Pareto front, cuts MACs/size without a real speed-up, unstable."""
    return [
        name
        for name, on in (
            (FLAG_PARETO, row.get("pareto")),
            (FLAG_NO_SPEEDUP, row.get("no_real_speedup")),
            (FLAG_UNSTABLE, not row.get("stable")),
        )
        if on
    ]


@dataclass(frozen=True)
class Column:
    """One column: `key` names the raw value in a row (and in JSON/CSV), `unit` is the raw value's unit,
    `fmt` turns the raw value into the shown text, `higher_is_better` is None for non-objectives; `derive`
    computes the raw value of a column that no row stores."""

    key: str
    header: str
    unit: str
    fmt: Callable[[Any], str]
    higher_is_better: bool | None = None
    text: bool = False  # aligned left (names rather than numbers)
    derive: Callable[[dict], Any] | None = None

    def raw(self, row: dict):
        return self.derive(row) if self.derive else row.get(self.key)

    def cell(self, row: dict) -> str:
        return self.fmt(self.raw(row))


COLUMNS = (
    Column("model", "Model", "", fmt_text, text=True),
    Column("chain", "Chain", "", fmt_text, text=True),
    Column("backend", "Backend", "", fmt_text, text=True),
    Column("batch_size", "Batch", "images", fmt_text),
    Column("threads", "Threads", "", fmt_text),
    Column("accuracy_top1", "Top-1 %", "fraction", fmt_fraction_pct, True),
    Column("accuracy_change", "Δ top-1 pt", "fraction", fmt_fraction_points, True),
    Column("params", "Params", "count", fmt_count, False),
    Column("macs", "MACs", "count per image", fmt_count, False),
    Column("size_bytes", "Size", "bytes", fmt_bytes, False),
    Column("latency_ms_p50", "p50 ms", "ms", fmt_ms, False),
    Column("latency_ms_ci95", "p50 95% CI ms", "ms", fmt_interval_ms, False),
    Column("latency_ms_p90", "p90 ms", "ms", fmt_ms, False),
    Column("latency_ms_p99", "p99 ms", "ms", fmt_ms, False),
    Column("throughput_per_s", "Samples/s", "images/s", fmt_rate, True),
    Column("speedup", "Speed-up", "ratio", fmt_speedup, True),
    Column("pct_of_peak", "% of peak", "%", fmt_pct, True),
    Column("peak_mem_bytes", "Peak mem", "bytes", fmt_bytes, False),
    Column("flags", "Flags", "", fmt_flags, text=True, derive=row_flags),
    Column("variant", "Variant", "", fmt_id, text=True),
)
BY_KEY = {c.key: c for c in COLUMNS}


def cells(row: dict, columns=COLUMNS) -> list[str]:
    """The shown text of every column of `row`."""
    return [c.cell(row) for c in columns]
