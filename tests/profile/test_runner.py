"""profile_variants end to end on tiny lenet: rows, skips with reasons, accuracy through the backend, memory in
a child process, and the store's environment."""
import pytest

from deploybench.profile.runner import profile_variants


def _by(rows, variant, backend, batch):
    return next(r for r in rows if (r["variant_id"], r["backend"], r["batch_size"]) == (variant.id, backend, batch))


def test_every_combination_is_measured_or_skipped_with_a_reason(onnx_workspace):
    ws, trained, onnx_variant, data_dir = onnx_workspace
    rows = profile_variants(ws, [trained, onnx_variant], ["torch-cpu", "ort-cpu"], batch_sizes=(1, 4), threads=1,
                            quick=True, data_dir=data_dir, isolate=False, log=lambda _: None)
    assert len(rows) == 8 and len(ws.measurements()) == 8
    assert "no torch loader" in _by(rows, onnx_variant, "torch-cpu", 1)["metrics"]["skipped"]
    assert "not ONNX" in _by(rows, trained, "ort-cpu", 4)["metrics"]["skipped"]
    eager, ort = _by(rows, trained, "torch-cpu", 4)["metrics"], _by(rows, onnx_variant, "ort-cpu", 1)["metrics"]
    assert eager["accuracy_top1"] == pytest.approx(trained.metrics["accuracy_top1"])  # same 20 test images
    assert eager["test_images"] == ort["test_images"] == 20
    assert ort["accuracy_top1"] == eager["accuracy_top1"] and ort["accuracy_top5"] == eager["accuracy_top5"]
    for m in (eager, ort):
        lo, hi = m["latency_ms_ci95"]
        assert lo <= m["latency_ms_p50"] <= hi and m["latency_ms_p50"] <= m["latency_ms_p90"] <= m["latency_ms_p99"]
        assert m["runs"] >= 5 and m["pct_of_peak"] > 0 and m["macs"] == 416_520
    stored = ws.measurements(trained.id)[0]
    assert stored["threads"] == 1 and stored["environment"]["threads"] == 1
    assert {"cpu_model", "libraries", "commit", "python"} <= set(stored["environment"])
    assert stored["environment"]["cuda_tf32"] is None or __import__("torch").cuda.is_available()
    assert "hostname" not in str(stored["environment"]).lower()
    assert ws.get_variant(trained.id).metrics["profile_static"]["by_module"][0]["module"] == "0"
    assert ws.get_machine("peak_flops/cpu/1/quick")["float32"] > 0


def test_memory_is_measured_in_a_child_process(trained_workspace):
    ws, trained, data_dir = trained_workspace
    (row,) = profile_variants(ws, [trained], ["torch-cpu"], batch_sizes=(2,), threads=1, quick=True,
                              data_dir=data_dir, isolate=True, log=lambda _: None)
    m = row["metrics"]
    assert m["memory_isolated"] is True and m["peak_mem_kind"] == "rss_growth" and m["peak_mem_bytes"] > 0
    assert m["accuracy_top1"] == pytest.approx(trained.metrics["accuracy_top1"])


def test_unavailable_backends_are_left_out_with_a_message(trained_workspace, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ws, trained, data_dir = trained_workspace
    lines = []
    rows = profile_variants(ws, [trained], ["torch-cuda"], batch_sizes=(1,), threads=1, quick=True,
                            data_dir=data_dir, isolate=False, log=lines.append)
    assert rows == [] and "torch-cuda: unavailable here" in lines[0]


@pytest.mark.gpu
def test_on_a_gpu_rows_record_device_memory_and_the_gpu(trained_workspace):
    ws, trained, data_dir = trained_workspace
    (row,) = profile_variants(ws, [trained], ["torch-cuda"], batch_sizes=(2,), threads=1, quick=True,
                              data_dir=data_dir, isolate=True, log=lambda _: None)
    m = row["metrics"]
    assert "skipped" not in m, m.get("skipped")
    assert m["peak_mem_kind"] == "cuda_max_allocated" and m["peak_mem_bytes"] > 0
    assert m["accuracy_top1"] == pytest.approx(trained.metrics["accuracy_top1"], abs=0.051)  # 1 of 20 images
    env = ws.measurements(trained.id)[0]["environment"]
    assert env["gpu"] and env["cuda"] and set(env["cuda_tf32"]) == {"conv", "matmul"}


def test_reuse_keeps_rows_of_the_same_code_and_protocol_and_remeasures_otherwise(trained_workspace, monkeypatch):
    ws, trained, data_dir = trained_workspace
    run = dict(batch_sizes=(1, 2), threads=1, quick=True, data_dir=data_dir, isolate=False)
    first = profile_variants(ws, [trained], ["torch-cpu"], log=lambda _: None, **run)
    assert all(r["metrics"]["protocol"]["min_runs"] == 5 for r in first)  # quick protocol, recorded
    lines = []
    again = profile_variants(ws, [trained], ["torch-cpu"], reuse=True, log=lines.append, **run)
    assert len(ws.measurements()) == 2 and "already measured here with this code, kept" in lines[-1]
    assert [r["metrics"]["latency_ms_p50"] for r in again] == [r["metrics"]["latency_ms_p50"] for r in first]
    # another batch size, another protocol or another commit: measured again
    profile_variants(ws, [trained], ["torch-cpu"], reuse=True, log=lambda _: None, **dict(run, batch_sizes=(1, 4)))
    assert len(ws.measurements()) == 4
    import deploybench.profile.runner as runner

    real = runner.environment
    monkeypatch.setattr(runner, "environment", lambda threads: dict(real(threads), commit="another"))
    profile_variants(ws, [trained], ["torch-cpu"], reuse=True, log=lambda _: None, **dict(run, batch_sizes=(1, 4)))
    assert len(ws.measurements()) == 6
