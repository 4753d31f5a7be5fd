"""Latency: warm-up, then timed runs until both a minimum count and a minimum duration are reached.

Statistics (`latency_stats`): p50/p90/p99 (numpy's linear interpolation), a 95% confidence interval of the
median, throughput (samples/s at the median latency) and `stable`.

The interval is the distribution-free order-statistic interval: with n sorted times, the ranks (j, k) around
n/2 are chosen, narrowest and symmetric, so that P(Binomial(n, 1/2) in [j, k-1]) >= 0.95; the true median lies
in [t_(j), t_(k)] with at least 95% confidence whatever the distribution of the times (timings are skewed and
have outliers, so no normal approximation). Below 6 runs no interval reaches 95%; [min, max] is given and the
measurement is not stable. `stable` is True when the interval's width is at most 5% of the median.

A result that is not stable is measured again (`measure_until_stable`): up to `Protocol.max_attempts` in all,
each after a pause, keeping the attempt with the narrowest interval relative to its median.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

STABLE_REL_WIDTH = 0.05


@dataclass(frozen=True)
class Protocol:
    """How long to measure, and how often to measure again a result that is not stable. The defaults give
    honest numbers; `quick()` is for tests (no pause between attempts)."""

    warmup: int = 10
    min_runs: int = 50
    min_seconds: float = 2.0
    max_attempts: int = 3
    retry_pause_s: float = 5.0

    @classmethod
    def quick(cls) -> "Protocol":
        return cls(warmup=2, min_runs=5, min_seconds=0.05, retry_pause_s=0.0)


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """1-based ranks (j, k) of the order-statistic interval for the median of n samples."""
    if n < 1:
        raise ValueError("no samples")
    log_half_n = n * math.log(0.5)
    pmf = [
        math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n) for i in range(n + 1)
    ]
    cdf = np.cumsum(pmf)
    # Coverage of [t_(j), t_(n+1-j)] is P(j <= B <= n-j) = 1 - 2 * P(B <= j-1); take the largest such j.
    best = 1
    for j in range(1, n // 2 + 1):
        if 1 - 2 * cdf[j - 1] >= confidence:
            best = j
        else:
            break
    return best, n + 1 - best


def latency_stats(times_s, batch_size: int) -> dict:
    """Statistics of per-batch times in seconds (see the module docstring). Latencies in milliseconds."""
    t = np.sort(np.asarray(times_s, dtype=np.float64)) * 1e3
    n = len(t)
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    j, k = median_ci_ranks(n)
    lo, hi = float(t[j - 1]), float(t[k - 1])
    covered = n >= 6
    rel_width = (hi - lo) / p50 if p50 > 0 else math.inf
    return dict(
        latency_ms_p50=p50,
        latency_ms_p90=p90,
        latency_ms_p99=p99,
        latency_ms_mean=float(t.mean()),
        latency_ms_min=float(t[0]),
        latency_ms_ci95=[lo, hi],
        ci95_rel_width=rel_width,
        throughput_per_s=batch_size * 1e3 / p50 if p50 > 0 else None,
        stable=bool(covered and rel_width <= STABLE_REL_WIDTH),
        runs=n,
        timed_seconds=float(t.sum() / 1e3),
    )


def finished_call(backend, inputs) -> Callable[[], None]:
    """One call of `backend` on prepared `inputs` that returns when the work is done: `run`, then `synchronize`
    (a no-op on CPU; on GPU it waits for the queued kernels, without which a timer sees only the launch).
    Every timer here times such calls."""

    def call() -> None:
        backend.run(inputs)
        backend.synchronize()

    return call


def time_runs(call: Callable[[], object], protocol: Protocol) -> list[float]:
    """Call `call` (a `finished_call`) `protocol.warmup` times, then time it with `perf_counter` until both
    `min_runs` and `min_seconds` are reached. Returns seconds per call."""
    for _ in range(protocol.warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < protocol.min_runs or time.perf_counter() - start < protocol.min_seconds:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return times


def measure_latency(backend, batch, batch_size: int, protocol: Protocol) -> dict:
    """Time `backend.run` on one prepared input batch; returns `latency_stats`."""
    return latency_stats(time_runs(finished_call(backend, backend.prepare(batch)), protocol), batch_size)


def measure_until_stable(
    measure: Callable[[], dict], protocol: Protocol, sleep: Callable[[float], None] = time.sleep
) -> dict:
    """Call `measure` (returns `latency_stats`) until a result is stable or `protocol.max_attempts` calls were
    made, sleeping `protocol.retry_pause_s` before each new call (a pause lets a passing load go by).

    Returns the most stable result (a stable one, else the narrowest `ci95_rel_width`; the latest on a tie) with
    `attempts`: how many calls were made."""
    best, attempts = measure(), 1
    while not best["stable"] and attempts < protocol.max_attempts:
        sleep(protocol.retry_pause_s)
        stats, attempts = measure(), attempts + 1
        if _instability(stats) <= _instability(best):
            best = stats
    return dict(best, attempts=attempts)


def _instability(stats: dict) -> tuple[bool, float]:
    """Sort key of `latency_stats`, most stable first: stable ones, then by relative interval width."""
    return not stats["stable"], stats["ci95_rel_width"]


PAIRS = 21  # alternated pairs behind every paired speed-up (`profile check --against`, the benchmark gates)


def paired_speedup(
    slow: Callable[[], object],
    fast: Callable[[], object],
    pairs: int = PAIRS,
    block: int = 5,
    settle_s: float = 0.05,
    warmup: int = 3,
) -> float:
    """Median over `pairs` alternated blocks (slow block, fast block, ...) of time(slow) / time(fast).

    Alternation is what holds the ratio still on a shared machine: a load spike or a frequency change slows
    both blocks of a pair alike, where two back-to-back latency measurements compare two different moments.

    Each block waits `settle_s` idle, makes `block` calls and keeps the median of all but the first. The
    wait is for the runtime just timed: ONNX Runtime's intra-op workers (and OpenMP's) keep spinning on the
    cores after a call returns, so a call made right after the *other* runtime's call competes with its
    spinning threads, and alternating single calls measures that contention more than the calls. The first
    call after the wait pays for the idle (threads woken, caches cold) and is dropped. Each call must return
    when its work is done: time a backend through `finished_call`, which waits for a GPU's queued kernels."""
    if block < 2:
        raise ValueError("a block needs at least 2 calls: the first one after the wait is dropped")
    for _ in range(warmup):
        slow()
        fast()

    after_wait = Protocol(warmup=1, min_runs=block - 1, min_seconds=0.0)  # the first call untimed

    def settled_median(call: Callable[[], object]) -> float:
        time.sleep(settle_s)
        return float(np.median(time_runs(call, after_wait)))

    ratios = [settled_median(slow) / settled_median(fast) for _ in range(pairs)]
    return float(np.median(ratios))
