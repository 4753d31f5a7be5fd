"""The machine's ceiling FLOP/s per dtype, from large GEMMs, measured once per machine and stored in the workspace.

`pct_of_peak` = achieved FLOP/s (2 x MACs x batch / p50 latency) / the ceiling of the dtype the variant computes
in. The ceiling of a dtype is the best of a few timed GEMMs (after a warm-up) with the profiling thread count,
through every runtime the profiler runs: torch's BLAS and, on CPU, ONNX Runtime's MLAS (MatMul for float32,
MatMulInteger for int8) and, for int8, oneDNN's `qlinear` (the kernel compiled int8-pt2e programs call). The
largest is the ceiling; each runtime's figure is stored under `by_runtime`. It is what this machine reaches, not
a datasheet's number, so it moves with the load on a shared machine; a percentage above 100 therefore means the
ceiling was measured low, and is reported as such (`peak_metrics`) instead of printed.

There is one measurement protocol: `profile run --quick` shortens the latency protocol, never the ceiling's.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np
import torch

from deploybench.platform.env import cpu_model

MIN_GEMM_N = 256
MAX_GEMM_N = 4096
MIN_GEMM_S = 0.05  # grow the matrix until one GEMM call takes this long (or reaches MAX_GEMM_N)
GEMM_REPEATS = 5

# Bumped whenever the way a ceiling is measured changes: a stored ceiling of another method is measured again.
PEAK_METHOD = 5

_MEASURED: dict[tuple, dict] = {}  # ceilings measured by this process, by (device, threads, hardware)


def _sized_gemm_flops(gemm: Callable[[int, int], float]) -> tuple[float, int]:
    """(FLOP/s, n) of the fastest `gemm(n, GEMM_REPEATS)` over sizes n = MIN_GEMM_N, 2 MIN_GEMM_N, ...

    The matrix grows while one call takes under MIN_GEMM_S (so dtypes without a fast kernel finish quickly) and
    the best size wins: which size is fastest depends on the caches and on the load of the moment."""
    n, best = MIN_GEMM_N, (0.0, MIN_GEMM_N)
    while True:
        flops = gemm(n, GEMM_REPEATS)
        best = max(best, (flops, n))
        if n >= MAX_GEMM_N or 2 * n**3 / flops >= MIN_GEMM_S:
            return best
        n *= 2


def _best_time(op: Callable[[], object], sync: Callable[[], None], repeats: int) -> float:
    op()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        op()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _ort_gemm_flops(dtype: str, n: int, threads: int, repeats: int = 5) -> float:
    """FLOP/s of one n x n GEMM in ONNX Runtime's CPU provider: MatMul (float32) or MatMulInteger (uint8 x
    int8 -> int32, the kernel its QDQ int8 models run on)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a_type, b_type, y_type, op = (
        (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT, "MatMul")
        if dtype == "float32"
        else (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, "MatMulInteger")
    )
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        "gemm",
        [helper.make_tensor_value_info("A", a_type, [n, n]), helper.make_tensor_value_info("B", b_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    if dtype == "float32":
        feeds = dict(A=rng.standard_normal((n, n), dtype=np.float32), B=rng.standard_normal((n, n), dtype=np.float32))
    else:
        feeds = dict(A=rng.integers(0, 255, (n, n), dtype=np.uint8), B=rng.integers(-128, 127, (n, n), dtype=np.int8))
    return 2 * n**3 / _best_time(lambda: session.run(None, feeds), lambda: None, repeats)


def _onednn_int8_flops(n: int, repeats: int = 5) -> float:
    """FLOP/s of one n x n int8 GEMM through oneDNN's `qlinear_pointwise` (uint8 activations x prepacked int8
    weights, per-channel scales, fp32 out): the op inductor lowers int8-pt2e Linear layers to, and on CPUs
    where torch's own `_int_mm` has no fast kernel the fastest int8 GEMM torch has."""
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise NotImplementedError("this torch build has no oneDNN qlinear")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (n, n), dtype=torch.uint8, generator=g)
    packed = torch.ops.onednn.qlinear_prepack(torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g), [n, n])
    x_scale, x_zp = torch.tensor(0.03), torch.tensor(128, dtype=torch.int32)
    w_scale, w_zp = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int32)
    op = lambda: torch.ops.onednn.qlinear_pointwise.tensor(  # noqa: E731
        x, x_scale, x_zp, packed, w_scale, w_zp, None, 1.0, 0, torch.float32, "none", [None], ""
    )
    return 2 * n**3 / _best_time(op, lambda: None, repeats)


def _gemm_flops(dtype: str, n: int, device: str, repeats: int = 5) -> float:
    if dtype == "int8":
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8, device=device)
        op = lambda: torch._int_mm(a, b)  # noqa: E731  int8 x int8 -> int32, what int8 kernels run on
    else:
        a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
        b = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
        op = lambda: a @ b  # noqa: E731
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return 2 * n**3 / _best_time(op, sync, repeats)


def measure_peak(device: str, threads: int) -> dict:
    """{dtype: FLOP/s} for float32, bfloat16, float16 (GPU) and int8, each the best runtime's; per runtime
    under `by_runtime`, the matrix sides under `gemm_n`, and why a dtype or runtime is missing under
    `unavailable`."""
    torch.set_num_threads(threads)
    dtypes = ["float32", "bfloat16", "int8"] + (["float16"] if device == "cuda" else [])
    peaks: dict = {"unavailable": {}, "gemm_n": {}, "by_runtime": {}, "method": PEAK_METHOD}
    for dtype in dtypes:
        for runtime, gemm in _gemms(dtype, device, threads).items():
            try:
                flops, n = _sized_gemm_flops(gemm)
            except (RuntimeError, NotImplementedError) as exc:
                peaks["unavailable"][f"{dtype}/{runtime}"] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            peaks["by_runtime"].setdefault(dtype, {})[runtime] = flops
            if flops > peaks.get(dtype, 0.0):
                peaks[dtype], peaks["gemm_n"][dtype] = flops, n
        if dtype not in peaks:
            peaks["unavailable"][dtype] = "no runtime ran a GEMM of this dtype"
    return peaks


def _gemms(dtype: str, device: str, threads: int) -> dict[str, Callable[[int, int], float]]:
    """{runtime: gemm(n, repeats) -> FLOP/s} of every runtime here with a GEMM of `dtype` on `device`."""
    gemms = {"torch": lambda n, r: _gemm_flops(dtype, n, device, r)}
    if device == "cpu" and dtype in ("float32", "int8"):
        gemms["onnxruntime"] = lambda n, r: _ort_gemm_flops(dtype, n, threads, r)
    if device == "cpu" and dtype == "int8":
        gemms["onednn"] = lambda n, r: _onednn_int8_flops(n, r)
    return gemms


def _hardware(device: str) -> str:
    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_model()


def peak_key(device: str, threads: int) -> str:
    """The workspace's machine-table key of the ceiling for (device, threads)."""
    return f"peak_flops/{device}/{threads}"


def machine_peak(ws, device: str, threads: int) -> dict:
    """The stored ceiling for (device, threads), measured with the full protocol when it is missing, was taken
    on other hardware or by another method (`PEAK_METHOD`). A ceiling this process already measured on this
    hardware is stored as is instead of being measured again."""
    hardware = _hardware(device)
    stored = ws.get_machine(peak_key(device, threads))
    if stored and stored.get("hardware") == hardware and stored.get("method") == PEAK_METHOD:
        return stored
    memo = (device, threads, hardware)
    if memo not in _MEASURED:
        _MEASURED[memo] = dict(measure_peak(device, threads), hardware=hardware, threads=threads)
    ws.set_machine(peak_key(device, threads), _MEASURED[memo])
    return dict(_MEASURED[memo])


def compute_dtype(variant, lineage=None) -> str | None:
    """The dtype a variant's arithmetic runs in, as the stage that made it recorded (`compute_dtype` in its
    metrics, from the quantization method table; inherited down the lineage), or None when no variant of
    `lineage` (default: the variant alone) recorded one: an unknown dtype has no ceiling to compare with."""
    for v in reversed(lineage or [variant]):
        if v.metrics.get("compute_dtype"):
            return v.metrics["compute_dtype"]
    return None


class Ceiling(NamedTuple):
    """The ceiling a variant is measured against: FLOP/s, the dtype of that GEMM, the runtime that reached it."""

    flops: float | None
    dtype: str | None
    runtime: str | None


def _runtime(peak: dict, dtype: str) -> str | None:
    by_runtime = peak.get("by_runtime", {}).get(dtype) or {}
    return max(by_runtime, key=by_runtime.get) if by_runtime else None


def peak_reference(peak: dict, dtype: str | None) -> Ceiling:
    """The ceiling for a variant computing in `dtype` (all None when `dtype` is None: unknown).

    A reduced-precision dtype (int8, bfloat16, float16) is measured against the larger of its own ceiling and
    the float32 one: on CPUs without VNNI or AVX512-BF16 the int8/bf16 GEMMs torch and ONNX Runtime expose are
    slower than float32 (emulated or widened), while oneDNN's int8/bf16 convolutions can beat them; the larger
    one is the ceiling a variant of that dtype can reach through some kernel."""
    if dtype is None:
        return Ceiling(None, None, None)
    options = [(peak.get(d), d) for d in dict.fromkeys((dtype, "float32")) if peak.get(d)]
    if not options:
        return Ceiling(None, dtype, None)
    flops, label = max(options)
    return Ceiling(flops, label, _runtime(peak, label))


def achieved_flops_per_s(macs: int | None, batch_size: int, latency_ms: float | None) -> float | None:
    """2 x MACs x batch / latency, in FLOP/s; None when MACs or latency is missing."""
    if not macs or not latency_ms:
        return None
    return 2 * macs * batch_size / (latency_ms / 1e3)


def pct_of_peak(
    macs: int | None, batch_size: int, latency_ms: float | None, peak: dict, dtype: str | None
) -> float | None:
    """Achieved FLOP/s as a percentage of the ceiling for `dtype` (see `peak_reference`), unchecked (see
    `peak_metrics`); None when something is missing."""
    achieved, ceiling = achieved_flops_per_s(macs, batch_size, latency_ms), peak_reference(peak, dtype).flops
    if achieved is None or not ceiling:
        return None
    return 100.0 * achieved / ceiling


def peak_metrics(macs: int | None, batch_size: int, latency_ms: float | None, peak: dict, dtype: str | None) -> dict:
    """The metrics of a measured row about its ceiling: `pct_of_peak` and the ceiling it was taken against
    (`peak_flops`, `peak_dtype`, `peak_runtime`). A percentage above 100 is a ceiling measured too low, not a
    result: it is stored as None with the reason under `pct_of_peak_invalid`."""
    ceiling = peak_reference(peak, dtype)
    metrics = dict(
        pct_of_peak=pct_of_peak(macs, batch_size, latency_ms, peak, dtype),
        peak_flops=ceiling.flops,
        peak_dtype=ceiling.dtype,
        peak_runtime=ceiling.runtime,
    )
    if metrics["pct_of_peak"] is not None and metrics["pct_of_peak"] > 100.0:
        achieved = achieved_flops_per_s(macs, batch_size, latency_ms)
        metrics["pct_of_peak"] = None
        metrics["pct_of_peak_invalid"] = (
            f"achieved {achieved / 1e9:.3g} GFLOP/s exceeds the measured ceiling "
            f"{ceiling.flops / 1e9:.3g} GFLOP/s of dtype {ceiling.dtype} "
            f"(runtime {ceiling.runtime})"
        )
    return metrics
