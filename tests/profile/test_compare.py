"""`profile compare`: JSON keys, baselines, the no-real-speed-up flag and the noise-aware Pareto front."""

import json

import pytest

from deploybench.cli.profile_cmd import main
from deploybench.profile.columns import COLUMNS
from deploybench.profile.compare import compare_rows
from deploybench.profile.pareto import ACCURACY, LATENCY, SIZE, dominates, pareto_front
from deploybench.profile.runner import profile_variants

JSON_KEYS = {
    "model",
    "dataset",
    "variant",
    "stages",
    "chain",
    "backend",
    "device",
    "batch_size",
    "threads",
    "accuracy_top1",
    "params",
    "macs",
    "size_bytes",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_ci95",
    "throughput_per_s",
    "peak_mem_bytes",
    "pct_of_peak",
    "stable",
    "pareto",
}


def _row(acc, ci, size=100, n=10_000, **kw):
    return dict(
        accuracy_top1=acc, latency_ms_p50=sum(ci) / 2, latency_ms_ci95=list(ci), size_bytes=size, test_images=n, **kw
    )


def test_differences_within_noise_do_not_dominate():
    base = _row(0.900, (1.0, 1.2))
    assert not dominates(_row(0.902, (1.1, 1.3)), base)  # both within noise
    assert not dominates(_row(0.902, (0.5, 0.6)), _row(0.950, (1.0, 1.2)))  # faster but clearly less accurate
    assert dominates(_row(0.901, (0.5, 0.6)), base)  # faster beyond noise, accuracy within noise (se 0.3 pt)
    assert dominates(_row(0.920, (1.1, 1.3)), base)  # more accurate beyond noise, latency within noise
    assert pareto_front(
        [_row(0.90, (1.0, 1.2)), _row(0.89, (0.5, 0.6)), _row(0.80, (0.7, 0.8)), _row(None, (0.1, 0.2))]
    ) == [True, True, False, False]
    assert pareto_front(
        [_row(0.80, (0.7, 0.8), size=1), _row(0.89, (0.5, 0.6), size=9)], [ACCURACY, LATENCY, SIZE]
    ) == [True, True]


@pytest.fixture
def profiled(onnx_workspace):
    ws, trained, onnx_variant, data_dir = onnx_workspace
    profile_variants(
        ws,
        [trained, onnx_variant],
        ["torch-cpu", "ort-cpu"],
        batch_sizes=(1, 4),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=False,
        log=lambda _: None,
    )
    return ws, trained, onnx_variant


def test_compare_json_has_every_key_and_a_baseline_for_the_export(profiled, capsys):
    ws, trained, onnx_variant = profiled
    assert main(["compare", "--workspace", str(ws.root), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 8 and all(JSON_KEYS | {c.key for c in COLUMNS} <= set(r) for r in rows)
    measured = [r for r in rows if r["skipped"] is None]
    assert len(measured) == 4 and all(r["threads"] == 1 and r["device"] == "cpu" for r in measured)
    export = next(r for r in measured if r["variant"] == onnx_variant.id and r["batch_size"] == 4)
    assert export["stages"] == ["train", "export"] and export["chain"] == "train+export"
    assert export["backend"] == "ort-cpu"
    assert export["baseline"] == f"{trained.id}@torch-cpu"  # no ancestor runs on ort-cpu: the root's eager row
    base = next(
        r for r in measured if r["variant"] == trained.id and r["backend"] == "torch-cpu" and r["batch_size"] == 4
    )
    assert export["accuracy_change"] == 0
    # a speed-up is given only between stable timings (quick runs on a busy machine may not be)
    if export["stable"] and base["stable"]:
        assert export["speedup"] == base["latency_ms_p50"] / export["latency_ms_p50"]
    else:
        assert export["speedup"] is None
    assert export["no_real_speedup"] is False  # same MACs and a bigger file: nothing was cut
    root = next(r for r in measured if r["variant"] == trained.id and r["batch_size"] == 1)
    assert root["baseline"] is None
    assert root["pareto"] is root["stable"]  # alone on torch-cpu at batch 1: on the front unless unstable


def test_table_and_csv(profiled, capsys):
    ws, trained, _ = profiled
    assert main(["compare", "--workspace", str(ws.root), "--backend", "torch-cpu"]) == 0
    out = capsys.readouterr().out
    assert "p50 95% CI ms" in out and "most accurate: lenet train" in out and "fastest at batch 4" in out
    assert out.splitlines()[0].split() == [w for c in COLUMNS for w in c.header.split()]
    assert main(["compare", "--workspace", str(ws.root), "--format", "csv", "--model", "lenet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("model,dataset,variant,stages") and len(lines) == 9
    assert {c.key for c in COLUMNS if c.key != "latency_ms_ci95"} <= set(lines[0].split(","))


def test_markdown_format_is_a_github_table_of_the_columns(profiled, capsys):
    ws, trained, _ = profiled
    assert main(["compare", "--workspace", str(ws.root), "--format", "markdown", "--backend", "torch-cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| " + " | ".join(c.header for c in COLUMNS) + " |"
    assert set(lines[1].replace(" ", "")) == set("|-:") and lines[1].count("|") == len(COLUMNS) + 1
    table = [line for line in lines[2:] if line.startswith("|")]
    assert len(table) == 2 and all(f"| {trained.id[:8]} |" in line for line in table)
    assert any(line.startswith("- most accurate: lenet train") for line in lines)


def test_no_real_speedup_flag(profiled):
    ws, trained, onnx_variant = profiled
    rows = compare_rows(ws, include_skipped=False)
    export = next(r for r in rows if r["variant"] == onnx_variant.id and r["batch_size"] == 1)
    assert export["no_real_speedup"] is False
    # Pretend the export shrank the model: without a latency interval wholly below its parent's, it is flagged.
    import deploybench.profile.compare as compare

    root = next(r for r in rows if r["variant"] == trained.id and r["batch_size"] == 1)
    fake = dict(export, size_bytes=1, latency_ms_ci95=[root["latency_ms_ci95"][0], 1e9])
    compare._against(fake, root)
    assert fake["no_real_speedup"] is True
    fake = dict(fake, latency_ms_ci95=[0.0, root["latency_ms_ci95"][0] * 0.99], latency_ms_p50=0.001)
    compare._against(fake, root)
    assert fake["no_real_speedup"] is False


def test_compare_on_a_missing_workspace_is_a_one_line_error(tmp_path, capsys):
    assert main(["compare", "--workspace", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: workspace")


def test_a_baseline_is_measured_on_the_same_data_files(profiled, tmp_path):
    """A parent measured last on other data files is no baseline: the accuracy change would compare test sets."""
    ws, trained, onnx_variant = profiled
    rows = {(r["variant"], r["backend"], r["batch_size"]): r for r in compare_rows(ws)}
    assert rows[(onnx_variant.id, "ort-cpu", 4)]["baseline"] == f"{trained.id}@torch-cpu"
    latest = [m for m in ws.measurements(trained.id) if m["backend"] == "torch-cpu" and m["batch_size"] == 4][-1]
    ws.add_measurements([dict(latest, metrics=dict(latest["metrics"], data_sha256="f" * 64))])
    rows = {(r["variant"], r["backend"], r["batch_size"]): r for r in compare_rows(ws)}
    assert rows[(trained.id, "torch-cpu", 4)]["data_sha256"] == "f" * 64
    export = rows[(onnx_variant.id, "ort-cpu", 4)]
    assert export["baseline"] is None and export["accuracy_change"] is None
