"""A trial's latency: its paired speed-up over the fp32 variant on the target backend (`profile check --against`'s
machinery: settled blocks of calls, alternated), with its absolute p50 beside it.

On a shared VM the speed of one call drifts by tens of percent within minutes; a ratio of two blocks timed in
alternation does not, so trials measured an hour apart compare. The fp32 variant stays loaded for the whole
search (one session or module per process), and each trial's variant is loaded, timed and closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from deploybench.profile.crosscheck import LoadedRuntimes
from deploybench.profile.latency import PAIRS, Protocol, finished_call, latency_stats, paired_speedup, time_runs
from deploybench.profile.static import input_shape, root_config
from deploybench.store import Variant, Workspace


@dataclass(frozen=True)
class LatencyProtocol:
    """How a trial is timed: `pairs` alternated pairs of settled blocks of `block` calls for the speed-up, and
    `p50` for the absolute latency. `quick()` is for tests: its numbers are not honest."""

    pairs: int = PAIRS
    block: int = 5
    settle_s: float = 0.05
    warmup: int = 3
    p50: Protocol = field(default_factory=lambda: Protocol(max_attempts=1))

    @classmethod
    def quick(cls) -> "LatencyProtocol":
        return cls(pairs=3, block=2, settle_s=0.0, warmup=1, p50=Protocol.quick())


class PairedTimer:
    """The fp32 `base` loaded on `backend` at `base_threads`; `measure` times a variant against it."""

    def __init__(
        self, ws: Workspace, base: Variant, backend: str, batch_size: int, base_threads: int, protocol: LatencyProtocol
    ):
        self.backend, self.batch_size, self.protocol = backend, batch_size, protocol
        torch.manual_seed(0)
        self.batch = torch.randn(batch_size, *input_shape(root_config(ws, base)))
        self._held = LoadedRuntimes()  # the base, for the whole search
        self.base = self._held.get(backend, base, batch_size, base_threads)
        self.base_call = finished_call(self.base, self.base.prepare(self.batch))
        self.base_call()
        self.base_stats = latency_stats(time_runs(self.base_call, protocol.p50), batch_size)

    def measure(self, variant: Variant, threads: int) -> dict:
        """{speedup, latency_ms_p50, latency_ms_ci95, stable, base_latency_ms_p50} of `variant` at `threads`."""
        with LoadedRuntimes() as loaded:
            impl = loaded.get(self.backend, variant, self.batch_size, threads)
            call = finished_call(impl, impl.prepare(self.batch))
            stats = latency_stats(time_runs(call, self.protocol.p50), self.batch_size)
            p = self.protocol
            speedup = paired_speedup(
                self.base_call, call, pairs=p.pairs, block=p.block, settle_s=p.settle_s, warmup=p.warmup
            )
        return dict(
            speedup=speedup,
            latency_ms_p50=stats["latency_ms_p50"],
            latency_ms_ci95=stats["latency_ms_ci95"],
            stable=stats["stable"],
            base_latency_ms_p50=self.base_stats["latency_ms_p50"],
        )

    def versus(self, slow: Variant, slow_threads: int, fast: Variant, fast_threads: int) -> float:
        """Paired speed-up of `fast` over `slow` (both on this backend and batch size), timed in alternation."""
        with LoadedRuntimes() as loaded:
            impls = [
                loaded.get(self.backend, v, self.batch_size, t) for v, t in ((slow, slow_threads), (fast, fast_threads))
            ]
            calls = [finished_call(i, i.prepare(self.batch)) for i in impls]
            p = self.protocol
            return paired_speedup(*calls, pairs=p.pairs, block=p.block, settle_s=p.settle_s, warmup=p.warmup)

    def close(self) -> None:
        self._held.__exit__(None, None, None)

    def __enter__(self) -> "PairedTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
