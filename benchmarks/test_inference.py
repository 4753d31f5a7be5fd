"""Inference of every variant kind of the small zoo models on each CPU backend, at batch 1 and 64.

pytest-benchmark times `backend.run` on one prepared batch (its statistics go into the JSON; its fastest
call is compared with this machine's baseline, where there is one). Around it our profiler times the same
call twice, with the loop `profile run` uses; the fastest call it saw must agree with pytest-benchmark's
fastest call within a factor a profiler that times the wrong thing (the input copy, the first compiling call,
a missing synchronize) exceeds, as such a mistake is in every call it times, the fastest included.

Fastest calls, not medians: load on a shared machine only ever adds time, and the fastest of many calls is
the one it disturbed least. pytest-benchmark times for only 0.3 s, so one burst of load can cover most of its
calls and lift its median far above our p50s taken just before and after.
"""

import pytest

from benchzoo import BENCH_PROTOCOL, CPU_BACKENDS, KINDS, MODELS
from deploybench.profile.latency import finished_call, latency_stats, time_runs

# How far pytest-benchmark's fastest call may sit outside the range of our two fastest calls.
AGREEMENT = 2.0


def profiler_stats(impl, inputs, batch_size: int) -> dict:
    """Our profiler's statistics (ms) of `impl.run(inputs)`: the timing loop `profile run` uses."""
    return latency_stats(time_runs(finished_call(impl, inputs), BENCH_PROTOCOL), batch_size)


@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_inference(benchmark, zoo, loaded, model, backend, kind, batch_size):
    variant = zoo.for_backend(model, kind, backend)
    impl, inputs = loaded(variant, backend, batch_size)
    before = profiler_stats(impl, inputs, batch_size)
    benchmark(impl.run, inputs)
    after = profiler_stats(impl, inputs, batch_size)
    stats = benchmark.stats.stats
    fastest, median = stats.min * 1e3, stats.median * 1e3
    ours, p50s = ([s[k] for s in (before, after)] for k in ("latency_ms_min", "latency_ms_p50"))
    benchmark.extra_info.update(
        variant=variant.id,
        format=variant.format,
        profiler_min_ms=ours,
        profiler_p50_ms=p50s,
        ratio_to_profiler_min=fastest / (sum(ours) / 2),
        ratio_to_profiler_p50=median / (sum(p50s) / 2),
    )
    assert min(ours) / AGREEMENT <= fastest <= max(ours) * AGREEMENT, (
        f"pytest-benchmark's fastest call {fastest:.3f} ms vs ours {ours[0]:.3f} / {ours[1]:.3f} ms "
        f"(medians: {median:.3f} ms vs p50 {p50s[0]:.3f} / {p50s[1]:.3f} ms)"
    )
