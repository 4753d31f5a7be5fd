"""The columns every renderer shows: one formatter per value, in the stored unit's conversion."""

import pytest

from deploybench.profile.columns import (
    BY_KEY,
    COLUMNS,
    MISSING,
    cells,
    fmt_bytes,
    fmt_count,
    fmt_fraction_pct,
    fmt_fraction_points,
    fmt_pct,
    row_flags,
)
from deploybench.profile.compare import KEYS


def test_units_are_converted_once():
    assert fmt_fraction_pct(0.9108) == "91.08"  # accuracy is stored as a fraction
    assert fmt_fraction_points(-0.0012) == "-0.12" and fmt_fraction_points(0.05) == "+5.00"
    assert fmt_pct(38.3) == "38.3"  # pct_of_peak is stored as a percentage (machine.pct_of_peak)
    assert BY_KEY["pct_of_peak"].fmt(38.3) == "38.3"


@pytest.mark.parametrize(
    "value,shown",
    [
        (0, "0 B"),
        (100, "100 B"),
        (1023, "1023 B"),
        (1024, "1.0 KB"),
        (250_000, "244.1 KB"),
        (5_242_880, "5.0 MB"),
        (3 << 30, "3.0 GB"),
        (5 << 40, "5120.0 GB"),
    ],
)
def test_bytes_follow_one_rule(value, shown):
    assert fmt_bytes(value) == shown
    assert BY_KEY["size_bytes"].fmt(value) == BY_KEY["peak_mem_bytes"].fmt(value) == shown


@pytest.mark.parametrize(
    "value,shown", [(999, "999"), (61_706, "61.71K"), (88_666_624, "88.67M"), (2_500_000_000, "2.50G")]
)
def test_counts_have_k_m_g(value, shown):
    assert fmt_count(value) == shown == BY_KEY["macs"].fmt(value) == BY_KEY["params"].fmt(value)


def test_every_column_shows_a_missing_value_the_same_way_and_is_in_json_and_csv():
    assert all(c.fmt(None) == MISSING for c in COLUMNS)
    assert len({c.key for c in COLUMNS}) == len({c.header for c in COLUMNS}) == len(COLUMNS)
    assert {c.key for c in COLUMNS} <= set(KEYS)
    assert {c.key for c in COLUMNS if c.higher_is_better is None} == {
        "model",
        "chain",
        "backend",
        "batch_size",
        "threads",
        "flags",
        "variant",
    }


def test_flags_and_cells_of_a_row():
    row = dict(
        model="lenet",
        chain="train+prune",
        variant="0123456789abcdef",
        backend="ort-cpu",
        batch_size=64,
        threads=4,
        accuracy_top1=0.9108,
        accuracy_change=None,
        params=61_706,
        macs=416_520,
        size_bytes=250_000,
        latency_ms_p50=1.23456,
        latency_ms_ci95=[1.2, 1.3],
        latency_ms_p90=1.5,
        latency_ms_p99=2.0,
        throughput_per_s=51_840.2,
        speedup=1.5,
        pct_of_peak=38.3,
        peak_mem_bytes=5_242_880,
        pareto=True,
        no_real_speedup=True,
        stable=False,
    )
    assert row_flags(row) == ["pareto", "no real speed-up", "unstable"]
    assert cells(row) == [
        "lenet",
        "train+prune",
        "ort-cpu",
        "64",
        "4",
        "91.08",
        "-",
        "61.71K",
        "416.52K",
        "244.1 KB",
        "1.235",
        "[1.200, 1.300]",
        "1.500",
        "2.000",
        "51840.2",
        "1.50×",
        "38.3",
        "5.0 MB",
        "pareto, no real speed-up, unstable",
        "01234567",
    ]
    assert row_flags(dict(row, pareto=False, no_real_speedup=False, stable=True)) == []
