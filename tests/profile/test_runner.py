"""profile_variants end to end on tiny lenet: rows, skips with reasons, accuracy through the backend, memory in
a child process, and the store's environment."""

import pytest
import torch

from deploybench.profile.runner import profile_variants


def _by(rows, variant, backend, batch):
    return next(r for r in rows if (r["variant_id"], r["backend"], r["batch_size"]) == (variant.id, backend, batch))


def test_every_combination_is_measured_or_skipped_with_a_reason(onnx_workspace):
    ws, trained, onnx_variant, data_dir = onnx_workspace
    rows = profile_variants(
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
    assert stored["environment"]["cuda_tf32"] is None or torch.cuda.is_available()
    assert "hostname" not in str(stored["environment"]).lower()
    assert ws.get_variant(trained.id).metrics["profile_static"]["by_module"][0]["module"] == "0"
    ceiling = ws.get_machine("peak_flops/cpu/1")  # the full ceiling, even for a quick run
    assert ceiling["float32"] > 0 and ws.get_machine("peak_flops/cpu/1/quick") is None
    assert (eager["peak_flops"], eager["peak_dtype"]) == (ceiling["float32"], "float32")
    assert eager["peak_runtime"] in ceiling["by_runtime"]["float32"]


def test_memory_is_measured_in_a_child_process(trained_workspace):
    ws, trained, data_dir = trained_workspace
    (row,) = profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=True,
        log=lambda _: None,
    )
    m = row["metrics"]
    assert m["memory_isolated"] is True and m["peak_mem_kind"] == "rss_growth" and m["peak_mem_bytes"] > 0
    assert m["accuracy_top1"] == pytest.approx(trained.metrics["accuracy_top1"])


def test_unavailable_backends_are_left_out_with_a_message(trained_workspace, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ws, trained, data_dir = trained_workspace
    lines = []
    rows = profile_variants(
        ws,
        [trained],
        ["torch-cuda"],
        batch_sizes=(1,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=False,
        log=lines.append,
    )
    assert rows == [] and "torch-cuda: unavailable here" in lines[0]


@pytest.mark.gpu
def test_on_a_gpu_rows_record_device_memory_and_the_gpu(trained_workspace):
    ws, trained, data_dir = trained_workspace
    (row,) = profile_variants(
        ws,
        [trained],
        ["torch-cuda"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=True,
        log=lambda _: None,
    )
    m = row["metrics"]
    assert "skipped" not in m, m.get("skipped")
    assert m["peak_mem_kind"] == "cuda_max_allocated" and m["peak_mem_bytes"] > 0
    assert m["accuracy_top1"] == pytest.approx(trained.metrics["accuracy_top1"], abs=0.051)  # 1 of 20 images
    env = ws.measurements(trained.id)[0]["environment"]
    assert env["gpu"] and env["cuda"] and set(env["cuda_tf32"]) == {"conv", "matmul"}


def test_reuse_keeps_rows_of_the_same_code_and_protocol_and_remeasures_otherwise(onnx_workspace, monkeypatch):
    import deploybench.profile.runner as runner

    ws, trained, onnx_variant, data_dir = onnx_workspace
    real = runner.environment
    commit = ["0123abc"]
    monkeypatch.setattr(runner, "environment", lambda threads: dict(real(threads), commit=commit[0]))

    def rows_after(**kw):
        run = dict(dict(batch_sizes=(1, 2), threads=1, quick=True, isolate=False), **kw)
        got = profile_variants(
            ws, [trained], ["torch-cpu", "ort-cpu"], data_dir=data_dir, reuse=True, log=lines.append, **run
        )
        return got, len(ws.measurements())

    lines = []
    first, n = rows_after()
    assert n == 4 and all(r["metrics"]["protocol"]["min_runs"] == 5 for r in first[:2])  # quick, recorded
    with monkeypatch.context() as m:  # everything kept: the model is not even loaded to count its MACs
        m.setattr(runner, "static_metrics", lambda *a: pytest.fail("static metrics recomputed"))
        again, n = rows_after()
    assert n == 4 and lines[-2:] == [
        f"lenet/fashion-mnist train [{trained.id[:8]}] {b}: kept from an earlier run of this code"
        for b in ("torch-cpu", "ort-cpu")
    ]
    assert [r["metrics"].get("latency_ms_p50") for r in again] == [r["metrics"].get("latency_ms_p50") for r in first]
    # Measured again: a new batch size, other threads, isolated vs in-process; the ONNX backend's "not ONNX"
    # skips do not depend on any of that beyond the threads, so they are kept when only isolation changes.
    for kw, added in (
        (dict(batch_sizes=(1, 4)), 4),
        (dict(batch_sizes=(1, 4), threads=2), 4),
        (dict(batch_sizes=(1, 4), threads=2, isolate=True), 2),
    ):
        assert rows_after(**kw)[1] == n + added, kw
        n += added
    for c in ("4567def", "4567def-dirty", "4567def-dirty", None):  # another, uncommitted or unknown code state
        commit[0] = c
        assert rows_after()[1] == n + 4, c
        n += 4
    commit[0] = "4567def"
    n = rows_after()[1]
    failed = [m for m in ws.measurements() if m["backend"] == "torch-cpu"][-1]
    ws.add_measurements([dict(failed, metrics=dict(skipped="failed: boom", error=True))])
    assert rows_after()[1] == n + 1 + 2  # the failed row, then torch-cpu measured again; ort-cpu's skips kept


def test_rows_are_kept_only_for_the_data_files_they_were_measured_on(trained_workspace, tmp_path, monkeypatch):
    import shutil

    import deploybench.profile.runner as runner

    ws, trained, data_dir = trained_workspace
    real = runner.environment
    monkeypatch.setattr(runner, "environment", lambda threads: dict(real(threads), commit="0123abc"))
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    labels = other / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:8] + bytes(10 - 1 - b for b in labels.read_bytes()[8:]))
    for d, kept in ((data_dir, False), (data_dir, True), (other, False), (other, True)):
        (row,) = profile_variants(
            ws,
            [trained],
            ["torch-cpu"],
            batch_sizes=(2,),
            threads=1,
            quick=True,
            data_dir=d,
            isolate=False,
            reuse=True,
            log=lambda _: None,
        )
        assert ("id" in row) is kept, (d, kept)  # rows read back from the store carry their id
    accuracy = {r["metrics"]["data_sha256"]: r["metrics"]["accuracy_top1"] for r in ws.measurements(trained.id)}
    assert len(accuracy) == 2  # each data folder's own accuracy, both stored


def test_a_profiling_process_past_its_time_limit_is_stopped_and_recorded_as_failed(trained_workspace, monkeypatch):
    from deploybench.profile import runner

    monkeypatch.setattr(runner, "CHILD_TIMEOUT_S", 0.5)  # a fresh interpreter takes longer to import torch
    ws, trained, data_dir = trained_workspace
    rows = profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(1, 4),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=True,
        log=lambda _: None,
    )
    for row in rows:
        assert row["metrics"]["error"] is True
        assert row["metrics"]["skipped"] == "failed: profiling process ran past its 0.5 s limit and was stopped"


def test_after_a_process_ran_out_of_time_the_smaller_batch_is_timed_without_repeating_the_accuracy_pass(
    trained_workspace, monkeypatch
):
    """The larger batch goes first and carries the accuracy pass over the test split; when its process runs
    out of time, the next one would start that pass again at a smaller batch, which is only slower. It times
    the variant only, and its row says why accuracy is missing."""
    from deploybench.profile import runner

    ws, trained, data_dir = trained_workspace
    jobs = []

    def child(job):
        jobs.append(job)
        if job["batch_size"] == 4:
            return dict(error="profiling process ran past its 3600 s limit and was stopped", timed_out=True)
        return runner.measure_combo_safe(**job)

    monkeypatch.setattr(runner, "_in_child", child)
    lines = []
    rows = profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(1, 4),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=True,
        log=lines.append,
    )
    assert [(j["batch_size"], j["with_accuracy"]) for j in jobs] == [(4, True), (1, False)]
    small, large = _by(rows, trained, "torch-cpu", 1)["metrics"], _by(rows, trained, "torch-cpu", 4)["metrics"]
    assert large["error"] is True and "ran past" in large["skipped"]
    assert small["latency_ms_p50"] > 0 and "accuracy_top1" not in small
    assert small["accuracy_unmeasured"] == (
        "the batch-4 process, which had the accuracy pass to make, ran past its 3600 s limit"
    )
    line = next(line for line in lines if "batch 1: p50" in line)
    assert line.endswith(f"accuracy not measured ({small['accuracy_unmeasured']})")


def _store_ceiling(ws, flops, threads=1):
    """A stored float32 ceiling for this CPU, as `machine_peak` would keep it (no GEMM timed)."""
    from deploybench.profile import machine

    ws.set_machine(
        machine.peak_key("cpu", threads),
        {
            "float32": flops,
            "by_runtime": {"float32": {"onnxruntime": flops}},
            "method": machine.PEAK_METHOD,
            "hardware": machine._hardware("cpu"),
            "threads": threads,
        },
    )


def test_a_quick_run_measures_against_the_full_ceiling_never_a_tiny_gemm(trained_workspace, monkeypatch):
    from deploybench.profile import machine

    sizes = []

    def gemm(*args):  # every runtime's GEMM: (dtype, n, device|threads, repeats) or (n, repeats)
        sizes.append(next(a for a in args if isinstance(a, int) and a >= machine.MIN_GEMM_N))
        return 1e9

    for name in ("_gemm_flops", "_ort_gemm_flops", "_onednn_int8_flops"):
        monkeypatch.setattr(machine, name, gemm)
    monkeypatch.setattr(machine, "_MEASURED", {})
    ws, trained, data_dir = trained_workspace
    (row,) = profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=False,
        log=lambda _: None,
    )
    assert sorted(set(sizes)) == [256, 512]  # grown as in a full run: a 256 GEMM at 1 GFLOP/s takes 0.03 s
    assert ws.get_machine("peak_flops/cpu/1")["gemm_n"]["float32"] == 512
    assert row["metrics"]["peak_flops"] == 1e9 and row["metrics"]["protocol"]["min_runs"] == 5


def test_a_percentage_above_the_ceiling_is_stored_as_none_with_a_warning(trained_workspace):
    ws, trained, data_dir = trained_workspace
    _store_ceiling(ws, 1e3)  # far below what lenet reaches: the ceiling is wrong, not the row
    lines = []
    (row,) = profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=False,
        log=lines.append,
    )
    m = row["metrics"]
    assert m["pct_of_peak"] is None and m["peak_flops"] == 1e3 and m["peak_runtime"] == "onnxruntime"
    assert (
        "exceeds the measured ceiling 1e-06 GFLOP/s of dtype float32 (runtime onnxruntime)" in m["pct_of_peak_invalid"]
    )
    warning = next(line for line in lines if line.startswith("warning:") and "% of peak" in line)
    assert "torch-cpu batch 2: % of peak not stored" in warning and m["pct_of_peak_invalid"] in warning
    _store_ceiling(ws, 1e18)
    (row,) = profile_variants(
        ws,
        [trained],
        ["torch-cpu"],
        batch_sizes=(2,),
        threads=1,
        quick=True,
        data_dir=data_dir,
        isolate=False,
        log=lambda _: None,
    )
    assert 0 < row["metrics"]["pct_of_peak"] < 100 and "pct_of_peak_invalid" not in row["metrics"]


def test_a_row_context_replaces_positional_arguments():
    from deploybench.profile.runner import RowContext, _row
    from deploybench.store import Variant

    class Cls:
        name, device = "torch-cpu", "cpu"

    variant = Variant("v1", None, "m", "d", "train", {}, "torch-state", [], 0, "")
    ctx = RowContext(
        variant=variant,
        cls=Cls,
        threads=1,
        env={"threads": 1},
        isolated=False,
        protocol={"p": 1},
        peak={"float32": 1e12},
        dtype="float32",
        scalars={"macs": 10**6},
    )
    stats = dict(latency_ms_p50=1.0, stable=True)
    row = _row(ctx, 4, dict(metrics=stats), {"accuracy_top1": 0.5})
    assert (row["variant_id"], row["backend"], row["device"], row["batch_size"]) == ("v1", "torch-cpu", "cpu", 4)
    assert row["metrics"]["pct_of_peak"] == pytest.approx(0.8) and row["metrics"]["accuracy_top1"] == 0.5
    assert row["metrics"]["protocol"] == {"p": 1} and row["metrics"]["memory_isolated"] is False
    assert _row(ctx, 1, dict(error="boom"), None)["metrics"] == dict(skipped="failed: boom", error=True)


def test_a_refusal_found_while_measuring_stores_no_static_metrics(trained_workspace, monkeypatch):
    """A refusal only a backend meets (its load) comes after the checks: the variant's static metrics are stored
    with its first rows, so none are stored."""
    from deploybench.errors import UserError
    from deploybench.profile import runner

    ws, trained, data_dir = trained_workspace
    _store_ceiling(ws, 1e12)
    monkeypatch.setattr(runner, "measure_combo_safe", lambda **job: dict(user_error="refused by the backend"))
    with pytest.raises(UserError, match="refused by the backend"):
        runner.profile_variants(
            ws,
            [trained],
            ["torch-cpu"],
            batch_sizes=(2,),
            threads=1,
            quick=True,
            data_dir=data_dir,
            isolate=False,
            log=lambda _: None,
        )
    assert "profile_static" not in ws.get_variant(trained.id).metrics and ws.measurements() == []


@pytest.fixture
def clean_commit(monkeypatch):
    """Environments name a clean commit, as on a clean checkout (a checkout being edited never reuses a pass)."""
    from deploybench.platform import env

    monkeypatch.setattr(env, "git_commit", lambda: "0123abc")
    env._static_environment.cache_clear()
    yield
    env._static_environment.cache_clear()


def test_the_profile_takes_the_accuracy_a_stage_computed_exactly_as_its_pass_would(
    trained_workspace, clean_commit, monkeypatch
):
    # A stage evaluates each variant it makes on its format's backend at the profile's accuracy batch size and
    # threads; the profile's pass on that backend would compute the same predictions again, so it is not made.
    from deploybench.optimize.base import get_stage, predictions_digest
    from deploybench.platform.env import physical_cores
    from deploybench.profile import runner
    from deploybench.profile.accuracy import ACCURACY_BATCH_SIZE, backend_logits, evaluating_backend, scores

    ws, trained, data_dir = trained_workspace
    exported = get_stage("export")().run(ws, trained, data_dir)
    made = [
        exported,
        get_stage("quantize")(method="int8-ort", calib_size=8).run(ws, exported, data_dir),
        get_stage("quantize")(method="int8-nncf", calib_size=8).run(ws, exported, data_dir),
        get_stage("quantize")(method="int8-pt2e", calib_size=8).run(ws, trained, data_dir),
        get_stage("prune")(ratio=0.5, finetune_epochs=1).run(ws, trained, data_dir),
    ]
    assert [v.format for v in made] == ["onnx", "onnx-int8", "openvino-ir", "torch-export-int8", "torch-pruned"]
    passes, job = {}, {}
    real_combo = runner.measure_combo

    def combo(**kw):
        job.update(kw)
        return real_combo(**kw)

    def accuracy(impl, test, batch_size):  # the profile's pass, keeping what it predicted
        logits, labels = backend_logits(impl, test, batch_size)
        passes[(job["variant_id"], job["backend"])] = predictions_digest(logits)
        return scores(logits, labels)

    monkeypatch.setattr(runner, "measure_combo", combo)
    monkeypatch.setattr(runner, "backend_accuracy", accuracy)

    def profile(**kw):
        passes.clear()
        run = dict(batch_sizes=(1, ACCURACY_BATCH_SIZE), quick=True, isolate=False, log=lambda _: None)
        rows = runner.profile_variants(
            ws, made, ["torch-cpu", "ort-cpu", "openvino-cpu"], data_dir=data_dir, **dict(run, **kw)
        )
        return {(r["variant_id"], r["backend"]): r["metrics"] for r in rows if r["batch_size"] == ACCURACY_BATCH_SIZE}

    with monkeypatch.context() as m:  # every pass made: each backend's predictions are the stage's
        m.setattr(runner, "stage_accuracy", lambda *a: {})
        measured = profile()
    for v in made:
        own = (v.id, evaluating_backend(v))
        assert v.metrics["accuracy_evaluated_by"]["batch_size"] == ACCURACY_BATCH_SIZE
        assert passes[own] == v.metrics["predictions_sha256"], v.format
        assert measured[own]["accuracy_top1"] == v.metrics["accuracy_top1"]
        assert measured[own]["accuracy_source"] == "profile"
    everything = dict(passes)

    rows = profile()  # the stage's pass stands for the profile's on its own backend, and only there
    assert set(passes) == set(everything) - {(v.id, evaluating_backend(v)) for v in made}
    assert ("openvino-cpu" in {b for _, b in passes}) and len(passes) == len(everything) - len(made)
    for v in made:
        row = rows[(v.id, evaluating_backend(v))]
        assert row["accuracy_source"] == "stage" and row["accuracy_batch_size"] == ACCURACY_BATCH_SIZE
        assert (row["accuracy_top1"], row["accuracy_top5"], row["test_images"]) == (
            v.metrics["accuracy_top1"],
            v.metrics["accuracy_top5"],
            20,
        )
        assert (row["accuracy_top1"], row["accuracy_top5"]) == (
            measured[(v.id, evaluating_backend(v))]["accuracy_top1"],
            measured[(v.id, evaluating_backend(v))]["accuracy_top5"],
        )

    profile(threads=physical_cores() + 1)  # other threads: not the stage's pass, made again
    assert set(passes) == set(everything)
    profile(batch_sizes=(1, ACCURACY_BATCH_SIZE // 2))  # another accuracy batch size: likewise
    assert set(passes) == set(everything)
