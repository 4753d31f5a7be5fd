"""A workspace with a trained variant, a child variant and measurement rows, for rendering tests."""

import json

import pytest

EVIL = "<script>alert('x')</script>"
PCT_OF_PEAK = 38.3  # stored as a percentage (deploybench.profile.machine.pct_of_peak), shown as is
PEAK_MEM_BYTES = 5_242_880


def _metrics(p50, acc, macs, size, stable=True):
    return dict(
        accuracy_top1=acc,
        accuracy_top5=0.99,
        test_images=20,
        params=61706,
        macs=macs,
        flops=2 * macs,
        size_bytes=size,
        latency_ms_p50=p50,
        latency_ms_p90=p50 * 1.1,
        latency_ms_p99=p50 * 1.3,
        latency_ms_ci95=[p50 * 0.98, p50 * 1.02] if stable else [p50 * 0.8, p50 * 1.2],
        throughput_per_s=1000 / p50,
        peak_mem_bytes=PEAK_MEM_BYTES,
        pct_of_peak=PCT_OF_PEAK,
        stable=stable,
        runs=50,
    )


@pytest.fixture
def report_workspace(trained_workspace):
    """Rendering input: rows are written directly (this tests the report, not the profiler)."""
    ws, trained, data_dir = trained_workspace
    training = json.loads((trained.path / "training.json").read_text())
    training["per_class"][0]["name"] = EVIL  # class names come from user folders (imagefolder)
    (trained.path / "training.json").write_text(json.dumps(training))

    def write(d):
        (d / "model.onnx").write_bytes(b"x" * 100)
        return {"accuracy_top1": 0.5, "agreement_top1": 0.97}

    child, _ = ws.create_variant(
        model="lenet",
        dataset="fashion-mnist",
        stage="quantize",
        config={"method": "int8-ort", "note": EVIL},
        parent=trained,
        fmt="onnx",
        write=write,
    )
    env = dict(cpu_model="test cpu", torch="2.x", note=EVIL)
    rows = []
    for vid, p50, acc, macs, size, stable in [
        (trained.id, 2.0, 0.55, 400_000, 250_000, True),
        (child.id, 1.0, 0.50, 400_000, 100, False),
    ]:
        for bs in (1, 64):
            rows.append(
                dict(
                    variant_id=vid,
                    backend="torch-cpu",
                    device="cpu",
                    batch_size=bs,
                    threads=2,
                    metrics=_metrics(p50 * bs, acc, macs, size, stable),
                    environment=env,
                )
            )
    ws.add_measurements(rows)
    ws.log_command(["profile", "run", "--model", EVIL])
    return ws
