"""Ceiling FLOP/s bookkeeping and % of peak (pure arithmetic; GEMMs are stubbed unless a test says otherwise)."""

import pytest

from deploybench.profile import machine
from deploybench.profile.machine import Ceiling, compute_dtype, machine_peak, pct_of_peak, peak_metrics, peak_reference
from deploybench.store import Variant


def test_pct_of_peak_is_achieved_flops_over_the_dtype_peak():
    peak = {"float32": 1e11, "int8": 5e10}
    # 1 G MACs x batch 10 in 100 ms = 2e11 FLOP/s... over a 1e11 peak (unchecked arithmetic; see peak_metrics)
    assert pct_of_peak(10**9, 10, 100.0, peak, "float32") == pytest.approx(200.0)
    assert peak_reference(peak, "int8")[:2] == (1e11, "float32")  # an int8 GEMM slower than fp32: fp32 is the ceiling
    assert peak_reference({"float32": 1e11, "int8": 4e11}, "int8")[:2] == (4e11, "int8")
    assert pct_of_peak(None, 1, 1.0, peak, "float32") is None
    # bf16 emulated (slower than fp32) is measured against fp32; a native bf16 peak above fp32 is its own
    assert peak_reference({"float32": 1e11, "bfloat16": 2e10}, "bfloat16")[:2] == (1e11, "float32")
    assert peak_reference({"float32": 1e11, "bfloat16": 3e11}, "bfloat16")[:2] == (3e11, "bfloat16")
    assert peak_reference({"float32": 1e11}, "float16")[:2] == (1e11, "float32")


def test_the_ceiling_names_the_runtime_that_reached_it():
    peak = {
        "float32": 2e11,
        "int8": 4e11,
        "by_runtime": {"float32": {"torch": 1e11, "onnxruntime": 2e11}, "int8": {"onednn": 4e11, "torch": 1e9}},
    }
    assert peak_reference(peak, "float32") == Ceiling(2e11, "float32", "onnxruntime")
    assert peak_reference(peak, "int8") == Ceiling(4e11, "int8", "onednn")
    assert peak_reference(peak, None) == Ceiling(None, None, None)
    # 1 M MACs x batch 10 in 1 ms = 2e10 FLOP/s: 10% of the fp32 ceiling, which the row records
    assert peak_metrics(10**6, 10, 1.0, peak, "float32") == dict(
        pct_of_peak=pytest.approx(10.0), peak_flops=2e11, peak_dtype="float32", peak_runtime="onnxruntime"
    )


def test_a_percentage_above_100_is_refused_with_its_reason():
    peak = {"float32": 1e11, "by_runtime": {"float32": {"torch": 1e11}}}
    m = peak_metrics(10**9, 10, 100.0, peak, "float32")  # 2e11 FLOP/s achieved over a 1e11 ceiling
    assert m["pct_of_peak"] is None
    assert m["pct_of_peak_invalid"] == (
        "achieved 200 GFLOP/s exceeds the measured ceiling 100 GFLOP/s of dtype float32 (runtime torch)"
    )
    assert m["peak_flops"] == 1e11 and m["peak_runtime"] == "torch"
    assert "pct_of_peak_invalid" not in peak_metrics(10**9, 10, 200.0, peak, "float32")  # exactly 100%: a ceiling


def test_compute_dtype_is_what_the_making_stage_recorded_never_a_guess_from_names():
    def v(stage, fmt="torch-state", dtype=None, **config):
        metrics = {"compute_dtype": dtype} if dtype else {}
        return Variant("x", None, "m", "d", stage, config, fmt, [], 0, "", metrics=metrics)

    assert compute_dtype(v("train", dtype="float32")) == "float32"
    assert compute_dtype(v("quantize", dtype="int8", method="int8-pt2e")) == "int8"
    assert compute_dtype(v("quantize", dtype="bfloat16", method="bf16")) == "bfloat16"
    # nearest record up the lineage; a config that merely mentions int8 decides nothing
    assert compute_dtype(v("export", fmt="onnx"), [v("quantize", dtype="int8"), v("export", fmt="onnx")]) == "int8"
    assert compute_dtype(v("export", fmt="onnx-int8", note="int8")) is None
    assert pct_of_peak(10**6, 1, 1.0, {"float32": 1e12}, None) is None


def test_machine_peak_is_measured_once_per_machine_and_again_when_hardware_or_method_change(
    trained_workspace, monkeypatch
):
    ws, _, _ = trained_workspace
    calls = []
    monkeypatch.setattr(machine, "_MEASURED", {})
    monkeypatch.setattr(
        machine,
        "measure_peak",
        lambda device, threads: calls.append((device, threads)) or {"float32": 1e11, "method": machine.PEAK_METHOD},
    )
    first = machine_peak(ws, "cpu", 1)
    assert first["float32"] == 1e11 and first["threads"] == 1 and first["hardware"] == machine._hardware("cpu")
    assert ws.get_machine(machine.peak_key("cpu", 1)) == first == ws.get_machine("peak_flops/cpu/1")
    assert machine_peak(ws, "cpu", 1) == first and len(calls) == 1  # read back, not re-measured
    monkeypatch.setattr(machine, "_MEASURED", {})
    for stale in (dict(first, hardware="another CPU"), dict(first, method=machine.PEAK_METHOD - 1)):
        ws.set_machine(machine.peak_key("cpu", 1), stale)
        assert machine_peak(ws, "cpu", 1) == first
    assert calls == [("cpu", 1)] * 2  # the stale ones were measured again (the second time from this process)


def test_the_ceiling_gemm_grows_until_one_call_takes_long_enough(monkeypatch):
    """The full protocol, the only one: a GEMM of the smallest size is too short to reach the kernel's speed."""
    sizes = []

    def gemm(n, repeats):
        sizes.append(n)
        return 1e9 * (2 if n == 512 else 1)  # fastest at 512; a 256 call takes 0.03 s, a 512 one 0.13 s

    assert machine._sized_gemm_flops(gemm) == (2e9, 512)
    assert sizes == [256, 512]
    sizes.clear()
    assert machine._sized_gemm_flops(lambda n, r: sizes.append(n) or 1e15) == (1e15, machine.MAX_GEMM_N)
    assert sizes == [256, 512, 1024, 2048, 4096]


def test_cpu_peak_is_the_best_runtime_and_records_each(monkeypatch):
    monkeypatch.setattr(machine, "_gemm_flops", lambda dtype, n, device, repeats: 1e9 if dtype == "float32" else 1e8)
    monkeypatch.setattr(machine, "MAX_GEMM_N", 512)  # the real ONNX Runtime and oneDNN GEMMs run, kept small
    peaks = machine.measure_peak("cpu", 1)
    # ONNX Runtime's real MLAS GEMM ran (no stub); the peak is the larger of it and the stubbed torch figure
    ort32 = peaks["by_runtime"]["float32"]["onnxruntime"]
    assert ort32 > 0 and peaks["by_runtime"]["float32"]["torch"] == 1e9
    assert peaks["float32"] == max(1e9, ort32)
    int8 = peaks["by_runtime"]["int8"]
    assert int8["onednn"] > 0  # oneDNN's qlinear ran for real: the kernel compiled int8-pt2e programs call
    assert peaks["int8"] == max(1e8, int8["onnxruntime"], int8["onednn"])
    assert peaks["method"] == machine.PEAK_METHOD
