"""Trust check of the latency protocol: our p50 against an independent timer, in the same process.

torch backends are compared with `torch.utils.benchmark.Timer` (same threads, `blocked_autorange`), ONNX
Runtime with a plain `session.run` loop, OpenVINO with a plain `request.infer` loop. The two alternate over
`rounds` rounds (ours, reference, ours, ...) and the medians of the per-round figures are compared: on a shared
VM the speed of the same call drifts by tens of percent within a minute, and timing one after the other would
compare two moments, not two timers.
Use it on a quiet machine.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from deploybench.errors import UserError
from deploybench.profile.backends import get_backend
from deploybench.profile.backends.base import BackendSkip
from deploybench.profile.latency import Protocol, finished_call, measure_latency, paired_speedup
from deploybench.profile.static import input_shape, root_config


def loaded_backend(backend: str, variant, batch_size: int, threads: int):
    """`backend` loaded with `variant`; a backend that is not here, or cannot run the variant, is a one-line
    error (`profile run` records these as skips; a check that names them has nothing to measure)."""
    cls = get_backend(backend)
    for ok, why in (cls.available(), cls.supports(variant)):
        if not ok:
            raise UserError(f"{backend} cannot run {variant.id} here: {why}")
    impl = cls()
    try:
        impl.load(variant, batch_size, threads)
    except BackendSkip as exc:
        raise UserError(f"{backend} cannot run {variant.id} here: {exc}") from None
    return impl


def _plain_loop_ms(call, protocol: Protocol) -> float:
    """Median ms of `call` timed alone, at least `min_runs` times and `min_seconds` long."""
    times = []
    start = time.perf_counter()
    while len(times) < protocol.min_runs or time.perf_counter() - start < protocol.min_seconds:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def cross_check(
    ws, variant, backend: str, batch_size: int, threads: int, protocol: Protocol | None = None, rounds: int = 5
) -> dict:
    """{ours_ms, reference_ms, ratio, reference, rounds}: medians over alternated rounds of our p50 and the
    independent timer's median (ms)."""
    protocol = protocol or Protocol(warmup=3, min_runs=10, min_seconds=1.0)
    impl = loaded_backend(backend, variant, batch_size, threads)
    batch = torch.randn(batch_size, *input_shape(root_config(ws, variant)))
    inputs = impl.prepare(batch)
    if backend.startswith("ort-cpu"):
        session, out = impl.session, impl.output_name
        what = "plain onnxruntime loop"

        def reference() -> float:
            return _plain_loop_ms(lambda: session.run([out], inputs), protocol)
    elif backend == "openvino-cpu":
        request = impl.request
        what = "plain openvino infer loop"

        def reference() -> float:
            return _plain_loop_ms(lambda: request.infer([inputs]), protocol)
    else:
        from torch.utils.benchmark import Timer

        what = "torch.utils.benchmark.Timer"

        def reference() -> float:
            timer = Timer("step()", globals=dict(step=finished_call(impl, inputs)), num_threads=threads)
            return timer.blocked_autorange(min_run_time=protocol.min_seconds).median * 1e3

    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(measure_latency(impl, batch, batch_size, protocol)["latency_ms_p50"])
        theirs.append(reference())
    impl.close()
    ours_ms, reference_ms = statistics.median(ours), statistics.median(theirs)
    return dict(ours_ms=ours_ms, reference_ms=reference_ms, ratio=ours_ms / reference_ms, reference=what, rounds=rounds)


class LoadedRuntimes:
    """Runtimes loaded once for a block and closed together at its end (every one, even when one fails to close):
    a reference timed against several variants is loaded, and for torch.compile compiled, once."""

    def __init__(self):
        self._loaded: dict = {}

    def get(self, backend: str, variant, batch_size: int, threads: int):
        key = (variant.id, backend, batch_size, threads)
        if key not in self._loaded:
            self._loaded[key] = loaded_backend(backend, variant, batch_size, threads)
        return self._loaded[key]

    def __enter__(self) -> "LoadedRuntimes":
        return self

    def __exit__(self, *exc) -> None:
        with contextlib.ExitStack() as stack:
            for impl in self._loaded.values():
                stack.callback(impl.close)
        self._loaded.clear()


def paired_against(
    ws,
    variant,
    backend: str,
    base,
    base_backend: str,
    batch_size: int,
    threads: int,
    *,
    runtimes: LoadedRuntimes | None = None,
) -> tuple[float, dict, dict]:
    """Speed-up of `variant` on `backend` over `base` on `base_backend`, the two timed in alternation
    (`paired_speedup`): the figure that survives a shared machine's drift. Returns it with what each runtime
    reported of itself (`Backend.run_facts`: the precision it really computed in, ...), variant's first.
    `runtimes`: the caller's, to load each runtime once for several pairs; without it both are closed here."""
    with contextlib.nullcontext(runtimes) if runtimes is not None else LoadedRuntimes() as loaded:
        calls = []
        for v, name in ((base, base_backend), (variant, backend)):
            impl = loaded.get(name, v, batch_size, threads)
            inputs = impl.prepare(torch.randn(batch_size, *input_shape(root_config(ws, v))))
            impl.run(inputs)
            calls.append((impl, inputs))
        (slow, slow_in), (fast, fast_in) = calls
        speedup = paired_speedup(finished_call(slow, slow_in), finished_call(fast, fast_in))
        return speedup, fast.run_facts(), slow.run_facts()
