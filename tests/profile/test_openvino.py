"""openvino-cpu: runs ONNX and OpenVINO IR variants of lenet, agrees with ONNX Runtime, records threads and the
precision it really computes in, and says why where openvino cannot import."""

import pytest
import torch

from deploybench.artifacts import formats
from deploybench.profile.backends import available_backends, backend_names, get_backend

pytest.importorskip("openvino")


def _run(name, variant, x, threads=1):
    backend = get_backend(name)()
    backend.load(variant, len(x), threads)
    out = backend.logits(backend.run(backend.prepare(x)))
    backend.synchronize()
    facts = backend.run_facts()
    backend.close()
    return out, facts


def _tolerance(facts):
    # bf16 keeps 8 bits of mantissa: on CPUs with native bf16 OpenVINO lowers fp32 to it by default.
    return (5e-2, 5e-2) if facts["runtime_compute_dtype"] == "bfloat16" else (1e-4, 1e-4)


def test_registered_available_and_runs_onnx_and_ir_only(onnx_workspace):
    ws, trained, onnx_variant, _ = onnx_workspace
    assert "openvino-cpu" in backend_names() and "openvino-cpu" in available_backends()
    cls = get_backend("openvino-cpu")
    assert cls.supports(onnx_variant) == (True, "")
    ok, why = cls.supports(trained)
    assert not ok and "torch-state" in why


def test_onnx_variant_matches_onnx_runtime_and_records_threads_and_precision(onnx_workspace):
    ws, trained, onnx_variant, _ = onnx_workspace
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    out, facts = _run("openvino-cpu", onnx_variant, x, threads=2)
    expected, _ = _run("ort-cpu", onnx_variant, x)
    assert out.shape == (4, 10)
    rtol, atol = _tolerance(facts)
    torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
    assert (out.argmax(1) == expected.argmax(1)).all()
    assert facts["inference_num_threads"] == 2 and facts["performance_hint"] == "LATENCY"
    assert facts["num_streams"] == 1
    assert facts["inference_precision_hint"] in ("f32", "bf16", "f16")
    assert facts["runtime_layer_precisions"] and facts["runtime_precision"]
    assert facts["runtime_compute_dtype"] in ("float32", "bfloat16")


def test_an_fp32_model_forced_to_f32_matches_onnx_runtime_closely(onnx_workspace):
    from deploybench.artifacts.openvino_runtime import compile_variant, runtime_facts

    ws, trained, onnx_variant, _ = onnx_workspace
    compiled = compile_variant(onnx_variant, 1, precision="f32")
    facts = runtime_facts(compiled)
    assert facts["inference_precision_hint"] == "f32" and facts["runtime_compute_dtype"] == "float32"
    x = torch.randn(3, 1, 28, 28)
    out = torch.from_numpy(compiled([x.numpy()])[compiled.outputs[0]])
    with torch.no_grad():
        expected = formats.load_module(trained)(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_ir_variant_of_int8_nncf_runs_and_reports_int8_layers(onnx_workspace):
    pytest.importorskip("nncf")
    from deploybench.optimize.quantize import QuantizeStage

    ws, trained, onnx_variant, data_dir = onnx_workspace
    ir = QuantizeStage(method="int8-nncf", calib_size=8).run(ws, trained, data_dir)
    assert get_backend("openvino-cpu").supports(ir) == (True, "")
    for name in ("ort-cpu", "torch-cpu"):
        assert not get_backend(name).supports(ir)[0]
    x = torch.randn(5, 1, 28, 28)
    out, facts = _run("openvino-cpu", ir, x)
    assert out.shape == (5, 10) and torch.isfinite(out).all()
    assert facts["runtime_compute_dtype"] == "int8"
    assert any(p in ("i8", "u8") for p in facts["runtime_layer_precisions"])
    # the stage evaluated it through the same runtime: its recorded predictions are OpenVINO's
    from deploybench.artifacts.runnable import runnable

    with torch.no_grad():
        torch.testing.assert_close(runnable(ir)(x), out)


def test_a_changed_ir_file_is_refused_before_openvino_reads_it(onnx_workspace):
    from deploybench.errors import UserError
    from deploybench.optimize.quantize import QuantizeStage

    pytest.importorskip("nncf")
    ws, trained, onnx_variant, data_dir = onnx_workspace
    ir = QuantizeStage(method="int8-nncf", calib_size=8).run(ws, trained, data_dir)
    with open(ir.path / "model.bin", "r+b") as fh:
        fh.seek(64)
        fh.write(b"\xff\xff\xff\xff")
    with pytest.raises(UserError, match="do not match the digest"):
        get_backend("openvino-cpu")().load(ir, 2, 1)


def test_a_profile_row_records_the_runtime_precision_and_its_dtype(onnx_workspace):
    from deploybench.profile.runner import _row_dtype, measure_combo

    ws, trained, onnx_variant, data_dir = onnx_workspace
    metrics = measure_combo(
        str(ws.root),
        onnx_variant.id,
        "openvino-cpu",
        2,
        1,
        dict(warmup=1, min_runs=3, min_seconds=0, max_attempts=1),
        str(data_dir),
        with_accuracy=False,
    )
    assert metrics["inference_num_threads"] == 1 and metrics["runtime_precision"]
    assert _row_dtype("float32", metrics["runtime_compute_dtype"]) == metrics["runtime_compute_dtype"]
    assert _row_dtype("int8", "bfloat16") == "int8" and _row_dtype("float32", None) == "float32"


def test_without_openvino_the_backend_is_unavailable_with_the_reason(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    ok, why = get_backend("openvino-cpu").available()
    assert not ok and why.startswith("openvino is not installed")
    assert "openvino-cpu" not in available_backends()


def test_cross_check_times_openvino_against_a_plain_infer_loop_and_pairs_with_ort(onnx_workspace):
    from deploybench.profile.crosscheck import cross_check, paired_against
    from deploybench.profile.latency import Protocol

    ws, trained, onnx_variant, _ = onnx_workspace
    r = cross_check(ws, onnx_variant, "openvino-cpu", 2, 1, Protocol.quick(), rounds=2)
    assert r["reference"] == "plain openvino infer loop" and r["ours_ms"] > 0 and r["reference_ms"] > 0
    speedup, facts, base_facts = paired_against(ws, onnx_variant, "openvino-cpu", onnx_variant, "ort-cpu", 2, 1)
    assert speedup > 0 and facts["runtime_compute_dtype"] in ("float32", "bfloat16") and base_facts == {}
