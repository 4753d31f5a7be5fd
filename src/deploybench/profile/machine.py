"""The machine's peak FLOP/s per dtype, from a large GEMM, measured once and stored in the workspace.

`pct_of_peak` = achieved FLOP/s (2 x MACs x batch / p50 latency) / the peak of the dtype the variant computes
in. The peak of a dtype is the best of a few timed GEMMs (after a warm-up) with the profiling thread count,
through every runtime the profiler runs: torch's BLAS and, on CPU, ONNX Runtime's MLAS (MatMul for float32,
MatMulInteger for int8) and, for int8, oneDNN's `qlinear` (the kernel compiled int8-pt2e programs call). The
largest is the peak; each is stored under `by_runtime`. It is what this machine reaches, not the datasheet's
number, and on a shared VM it moves with the moment (MatMulInteger: 216 and 342 GOP/s in two measurements here).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from deploybench.profile.env import cpu_model

MAX_GEMM_N = 4096
QUICK_GEMM_N = 256
MIN_GEMM_SECONDS = 0.2  # grow the matrix until one GEMM takes this long (or reaches MAX_GEMM_N)


# 1: torch GEMM at the largest size; 2: + ONNX Runtime; 3: the best over every size tried; 4: + oneDNN's int8
# qlinear on CPU (stored peaks of an older method are re-measured).
PEAK_METHOD = 4


def _sized_gemm_flops(gemm: Callable[[int, int], float], quick: bool) -> tuple[float, int]:
    """(FLOP/s, n) of the fastest `gemm(n, repeats)` over sizes n = 256, 512, ...: the GEMM grows while one call
    takes under MIN_GEMM_SECONDS (so dtypes without a fast kernel here finish in about a second), and the best
    size wins (which one is fastest depends on caches and, on a shared VM, on the moment: measured here, torch's
    fp32 GEMM gave 85 GFLOP/s at n=4096 in one run and 146 at n=2048 in the next)."""
    n, best = QUICK_GEMM_N, (0.0, QUICK_GEMM_N)
    while True:
        flops = gemm(n, 2 if quick else 5)
        best = max(best, (flops, n))
        if quick or n >= MAX_GEMM_N or 2 * n**3 / flops >= MIN_GEMM_SECONDS:
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

    a_type, b_type, y_type, op = ((TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT, "MatMul")
                                  if dtype == "float32" else
                                  (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32, "MatMulInteger"))
    graph = helper.make_graph([helper.make_node(op, ["A", "B"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", a_type, [n, n]),
                               helper.make_tensor_value_info("B", b_type, [n, n])],
                              [helper.make_tensor_value_info("Y", y_type, [n, n])])
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
    weights, per-channel scales, fp32 out): the op inductor lowers int8-pt2e Linear layers to (torch's own
    `_int_mm` has no fast CPU kernel: 3 GOP/s here). Measured on this AVX2 VM: 330 GOP/s, ONNX Runtime's
    MatMulInteger 342 in the same run and 216 in an earlier one."""
    if not hasattr(torch.ops.onednn, "qlinear_pointwise"):
        raise NotImplementedError("this torch build has no oneDNN qlinear")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 255, (n, n), dtype=torch.uint8, generator=g)
    packed = torch.ops.onednn.qlinear_prepack(torch.randint(-128, 127, (n, n), dtype=torch.int8, generator=g), [n, n])
    x_scale, x_zp = torch.tensor(0.03), torch.tensor(128, dtype=torch.int32)
    w_scale, w_zp = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int32)
    op = lambda: torch.ops.onednn.qlinear_pointwise.tensor(  # noqa: E731
        x, x_scale, x_zp, packed, w_scale, w_zp, None, 1.0, 0, torch.float32, "none", [None], "")
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


def measure_peak(device: str, threads: int, quick: bool = False) -> dict:
    """{dtype: FLOP/s} for float32, bfloat16, float16 (GPU) and int8, each the best runtime's; per runtime
    under `by_runtime`, the matrix sides under `gemm_n`, and why a dtype or runtime is missing under
    `unavailable`."""
    torch.set_num_threads(threads)
    dtypes = ["float32", "bfloat16", "int8"] + (["float16"] if device == "cuda" else [])
    peaks: dict = {"unavailable": {}, "gemm_n": {}, "by_runtime": {}, "method": PEAK_METHOD}
    for dtype in dtypes:
        gemms = {"torch": lambda n, r, d=dtype: _gemm_flops(d, n, device, r)}
        if device == "cpu" and dtype in ("float32", "int8"):
            gemms["onnxruntime"] = lambda n, r, d=dtype: _ort_gemm_flops(d, n, threads, r)
        if device == "cpu" and dtype == "int8":
            gemms["onednn"] = lambda n, r: _onednn_int8_flops(n, r)
        for runtime, gemm in gemms.items():
            try:
                flops, n = _sized_gemm_flops(gemm, quick)
            except (RuntimeError, NotImplementedError) as exc:
                peaks["unavailable"][f"{dtype}/{runtime}"] = f"{type(exc).__name__}: {exc}"[:200]
                continue
            peaks["by_runtime"].setdefault(dtype, {})[runtime] = flops
            if flops > peaks.get(dtype, 0.0):
                peaks[dtype], peaks["gemm_n"][dtype] = flops, n
        if dtype not in peaks:
            peaks["unavailable"][dtype] = "no runtime ran a GEMM of this dtype"
    return peaks


def machine_peak(ws, device: str, threads: int, quick: bool = False) -> dict:
    """The stored peak for (device, threads), measured now if missing or taken on another CPU/GPU.
    Quick (tiny-GEMM) peaks are stored under their own key, so they never stand for the real one."""
    hardware = torch.cuda.get_device_name(0) if device == "cuda" else cpu_model()
    key = f"peak_flops/{device}/{threads}" + ("/quick" if quick else "")
    stored = ws.get_machine(key)
    if stored and stored.get("hardware") == hardware and stored.get("method") == PEAK_METHOD:
        return stored
    value = dict(measure_peak(device, threads, quick), hardware=hardware, threads=threads)
    ws.set_machine(key, value)
    return value


def compute_dtype(variant, lineage=None) -> str:
    """The dtype a variant's arithmetic runs in, read from its format and the configs of its stages (and of its
    ancestors', when `lineage` is given: an export of an int8 model is int8): int8, float16, bfloat16 or
    float32 (the default)."""
    keys = ("method", "dtype", "quantized", "precision")
    chain = lineage or [variant]
    text = " ".join([variant.format, *(str({k: v for k, v in c.config.items() if k in keys}) for c in chain)]).lower()
    if "int8" in text or "qat" in text or "'dynamic'" in text:
        return "int8"
    if "bf16" in text or "bfloat16" in text:
        return "bfloat16"
    if "fp16" in text or "float16" in text:
        return "float16"
    return "float32"


def peak_reference(peak: dict, dtype: str) -> tuple[float | None, str]:
    """(FLOP/s, label) that a variant computing in `dtype` is measured against.

    A reduced-precision dtype (int8, bfloat16, float16) is measured against the larger of its own peak and the
    fp32 one: on CPUs without VNNI or AVX512-BF16 the int8/bf16 GEMMs torch and ONNX Runtime expose are slower
    than fp32 (emulated or widened), while oneDNN's int8/bf16 convolutions can beat them; the larger peak keeps
    every variant below 100% of a real ceiling instead of above a slow path's. (Measured here: a bf16 lenet
    showed 365% of the emulated bf16 GEMM peak.)"""
    if dtype == "float32":
        return peak.get("float32"), "float32"
    options = [o for o in ((peak.get(dtype), dtype), (peak.get("float32"), "float32")) if o[0]]
    return max(options) if options else (None, dtype)


def pct_of_peak(macs: int | None, batch_size: int, latency_ms: float | None, peak: dict, dtype: str) -> float | None:
    """Achieved FLOP/s (2 x MACs x batch / latency) as a percentage of the reference peak for `dtype`
    (see `peak_reference`); None when something is missing."""
    flops, _ = peak_reference(peak, dtype)
    if not macs or not latency_ms or not flops:
        return None
    return 100.0 * (2 * macs * batch_size / (latency_ms / 1e3)) / flops
