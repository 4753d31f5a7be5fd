"""Peak FLOP/s bookkeeping and % of peak (pure arithmetic; the GEMM itself is timed once, quickly)."""
import pytest

from deploybench.profile.machine import compute_dtype, machine_peak, pct_of_peak, peak_reference
from deploybench.store import Variant


def test_pct_of_peak_is_achieved_flops_over_the_dtype_peak():
    peak = {"float32": 1e11, "int8": 5e10}
    # 1 G MACs x batch 10 in 100 ms = 2e11 FLOP/s... over a 1e11 peak
    assert pct_of_peak(10**9, 10, 100.0, peak, "float32") == pytest.approx(200.0)
    assert peak_reference(peak, "int8") == (1e11, "float32")  # torch's int8 GEMM slower than fp32 here
    assert peak_reference({"float32": 1e11, "int8": 4e11}, "int8") == (4e11, "int8")
    assert pct_of_peak(None, 1, 1.0, peak, "float32") is None
    # bf16 emulated (slower than fp32) is measured against fp32; a native bf16 peak above fp32 is its own
    assert peak_reference({"float32": 1e11, "bfloat16": 2e10}, "bfloat16") == (1e11, "float32")
    assert peak_reference({"float32": 1e11, "bfloat16": 3e11}, "bfloat16") == (3e11, "bfloat16")
    assert peak_reference({"float32": 1e11}, "float16") == (1e11, "float32")


def test_compute_dtype_from_the_variant_record():
    def v(stage, fmt="torch-state", **config):
        return Variant("x", None, "m", "d", stage, dict(config, _lineage=["train", stage]), fmt, [], 0, "")

    assert compute_dtype(v("train")) == "float32"
    assert compute_dtype(v("quantize", method="int8-pt2e")) == "int8"
    assert compute_dtype(v("quantize", fmt="onnx", method="int8-ort")) == "int8"
    assert compute_dtype(v("quantize", method="bf16")) == "bfloat16"
    assert compute_dtype(v("quantize", method="dynamic")) == "int8"
    assert compute_dtype(v("export", fmt="onnx"), [v("quantize", method="int8-pt2e"), v("export")]) == "int8"


def test_machine_peak_is_measured_once_and_stored(trained_workspace):
    ws, _, _ = trained_workspace
    first = machine_peak(ws, "cpu", 1, quick=True)
    assert first["float32"] > 0 and first["threads"] == 1
    assert ws.get_machine("peak_flops/cpu/1/quick") == first
    assert machine_peak(ws, "cpu", 1, quick=True) == first  # read back, not re-measured


def test_cpu_peak_is_the_best_runtime_and_records_each(monkeypatch):
    from deploybench.profile import machine

    monkeypatch.setattr(machine, "_gemm_flops", lambda dtype, n, device, repeats: 1e9 if dtype == "float32" else 1e8)
    peaks = machine.measure_peak("cpu", 1, quick=True)
    # ONNX Runtime's real MLAS GEMM ran (no stub); the peak is the larger of it and the stubbed torch figure
    ort32 = peaks["by_runtime"]["float32"]["onnxruntime"]
    assert ort32 > 0 and peaks["by_runtime"]["float32"]["torch"] == 1e9
    assert peaks["float32"] == max(1e9, ort32)
    int8 = peaks["by_runtime"]["int8"]
    assert int8["onednn"] > 0  # oneDNN's qlinear ran for real: the kernel compiled int8-pt2e programs call
    assert peaks["int8"] == max(1e8, int8["onnxruntime"], int8["onednn"])
    assert peaks["method"] == machine.PEAK_METHOD
