"""Trust check of the latency protocol: our p50 against an independent timer, in the same process.

torch backends are compared with `torch.utils.benchmark.Timer` (same threads, `blocked_autorange`), ONNX
Runtime with a plain `session.run` loop. Use it on a quiet machine; the lead's figures come from it.
"""
from __future__ import annotations

import statistics
import time

import torch

from deploybench.profile.backends import get_backend
from deploybench.profile.latency import Protocol, measure_latency
from deploybench.profile.static import input_shape, root_config


def cross_check(ws, variant, backend: str, batch_size: int, threads: int, protocol: Protocol | None = None) -> dict:
    """{ours_ms, reference_ms, ratio, reference}: our p50 and the independent timer's median (ms)."""
    impl = get_backend(backend)()
    impl.load(variant, batch_size, threads)
    batch = torch.randn(batch_size, *input_shape(root_config(ws, variant)))
    ours = measure_latency(impl, batch, batch_size, protocol or Protocol())["latency_ms_p50"]
    inputs = impl.prepare(batch)
    if backend.startswith("ort-cpu"):
        session, name, out = impl.session, impl.input_name, impl.output_name
        times = []
        for i in range(10 + 200):
            t0 = time.perf_counter()
            session.run([out], inputs)
            if i >= 10:
                times.append(time.perf_counter() - t0)
        reference, what = statistics.median(times) * 1e3, "plain onnxruntime loop"
    else:
        from torch.utils.benchmark import Timer

        def step():
            impl.run(inputs)
            impl.synchronize()

        m = Timer("step()", globals=dict(step=step), num_threads=threads).blocked_autorange(min_run_time=2.0)
        reference, what = m.median * 1e3, "torch.utils.benchmark.Timer"
    impl.close()
    return dict(ours_ms=ours, reference_ms=reference, ratio=ours / reference, reference=what)
