"""Inference of every variant kind of the small zoo models on each CPU backend, at batch 1 and 64.

pytest-benchmark times `backend.run` on one prepared batch (its median goes into the JSON and is compared
with the committed baseline). Around it our profiler measures the same call twice; its p50 must bracket
pytest-benchmark's median (within a factor that load on a shared machine cannot reach, but a profiler that
times the wrong thing, e.g. the input copy, the first compiling call or a missing synchronize, does).
"""
import pytest

from benchzoo import BENCH_PROTOCOL, CPU_BACKENDS, KINDS, MODELS
from deploybench.profile.latency import finished_call, latency_stats, time_runs

# How far pytest-benchmark's median may sit outside the range of our two p50s (the time between them is a
# few seconds; a shared 2-core machine's load moves medians by tens of percent, not by 2x).
AGREEMENT = 2.0


def profiler_p50(impl, inputs, batch_size: int) -> float:
    """Our profiler's p50 (ms) of `impl.run(inputs)`: the timing loop `profile run` uses."""
    times = time_runs(finished_call(impl, inputs), BENCH_PROTOCOL)
    return latency_stats(times, batch_size)["latency_ms_p50"]


@pytest.mark.parametrize("batch_size", [1, 64])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("model", MODELS)
def test_inference(benchmark, zoo, loaded, model, backend, kind, batch_size):
    variant = zoo.for_backend(model, kind, backend)
    impl, inputs = loaded(variant, backend, batch_size)
    before = profiler_p50(impl, inputs, batch_size)
    benchmark(impl.run, inputs)
    after = profiler_p50(impl, inputs, batch_size)
    median = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update(variant=variant.id, format=variant.format, profiler_p50_ms=[before, after],
                                ratio_to_profiler=median / ((before + after) / 2))
    lo, hi = min(before, after), max(before, after)
    assert lo / AGREEMENT <= median <= hi * AGREEMENT, (
        f"pytest-benchmark median {median:.3f} ms vs our p50 {before:.3f} / {after:.3f} ms")
