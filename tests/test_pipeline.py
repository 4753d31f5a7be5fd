"""The main job end to end on tiny data: train → optimize all → profile → report."""

import re

from deploybench.cli import main as deploybench_main
from deploybench.store import Workspace


def test_pipeline_end_to_end(tmp_path, tiny_fashion_mnist, capsys, monkeypatch):
    import deploybench.profile.runner as runner

    real = runner.environment  # a committed, clean code state, whatever the checkout running the tests
    monkeypatch.setattr(runner, "environment", lambda threads: dict(real(threads), commit="0123abc"))
    out = tmp_path / "report" / "index.html"
    argv = [
        "pipeline",
        "--dataset",
        "fashion-mnist",
        "--models",
        "lenet",
        "--epochs",
        "1",
        "--quick",
        "--backends",
        "torch-cpu,ort-cpu",
        "--batch-sizes",
        "4",
        "--out",
        str(out),
        "--workspace",
        str(tmp_path / "ws"),
        "--data-dir",
        str(tiny_fashion_mnist),
    ]
    assert deploybench_main.main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"report: {out}" in printed and out.is_file()
    (model_line,) = [line for line in printed.splitlines() if line.startswith("lenet: ") and " min (train " in line]
    (whole,) = [line for line in printed.splitlines() if line.startswith("all 1 models: ")]
    phases = r"\(train [\d.]+, optimize [\d.]+, profile [\d.]+, report [\d.]+\)"
    assert re.fullmatch(rf"all 1 models: [\d.]+ min {phases}", whole)
    assert float(whole.split()[3]) >= float(model_line.split()[1])  # the run is its model and the report
    # Output captured is a log, not a terminal: no bar redrawn into it, one line per phase, epoch and chain.
    assert "\r" not in captured.out + captured.err
    lines = captured.out.splitlines() + captured.err.splitlines()
    assert [line for line in lines if line.startswith("pipeline ")] == [
        "pipeline 1/4: lenet: train",
        "pipeline 2/4: lenet: optimize all",
        "pipeline 3/4: lenet: profile",
        "pipeline 4/4: report",
    ]
    assert sum(line.startswith("epoch ") for line in lines) == 1
    from deploybench.optimize.pipeline import default_chains

    chains = [
        line
        for line in lines
        if line.startswith("lenet: optimize all ") or " skipped: " in line or line.startswith("lenet: chain ")
    ]
    assert len(chains) == len(default_chains())
    assert len(lines) < 120
    from deploybench.optimize.quantize import METHODS

    if why := METHODS["fp16"].left_out_of_all():  # each chain it leaves out is named, with the reason
        assert f"lenet: quantize:fp16 skipped: {why}" in printed.splitlines()
    ws = Workspace(tmp_path / "ws")
    stages = {"+".join(v.stages) for v in ws.variants()}
    assert {"train", "train+export", "train+quantize", "train+prune"} <= stages
    measured = {m["variant_id"] for m in ws.measurements() if "skipped" not in m["metrics"]}
    # every variant that torch-cpu or ort-cpu can run ran on at least one of them (OpenVINO IR needs openvino-cpu)
    assert measured == {v.id for v in ws.variants() if v.format != "openvino-ir"}
    assert "lenet" in out.read_text()
    # One parent has several quantized children: each is named with its method, in the table and the report.
    quantized = {v.chain for v in ws.variants() if v.stages == ["train", "quantize"]}
    assert "train+quantize[int8-pt2e]" in quantized and len(quantized) >= 2
    assert all(chain in printed and chain in out.read_text() for chain in quantized)
    # Run again, it redoes nothing: same variants, no new measurement, and says what it kept.
    rows = len(ws.measurements())
    assert deploybench_main.main(argv) == 0
    printed = capsys.readouterr().out
    assert len(ws.measurements()) == rows and len(ws.variants()) == len(measured) + 1  # + the int8-nncf IR
    assert printed.count("kept from an earlier run of this code") == len(ws.variants()) * 2  # 2 backends each


def test_a_failing_model_is_reported_and_the_others_go_on(tmp_path, tiny_fashion_mnist, capsys):
    # Two models that fail in training (cheap): the second is still tried after the first fails, both are
    # reported on one line each, and the report is written for what there is.
    out = tmp_path / "index.html"
    argv = [
        "pipeline",
        "--dataset",
        "fashion-mnist",
        "--models",
        "tests_user_arch:broken,tests_user_arch:broken",
        "--epochs",
        "1",
        "--quick",
        "--backends",
        "torch-cpu",
        "--batch-sizes",
        "4",
        "--out",
        str(out),
        "--workspace",
        str(tmp_path / "ws"),
        "--data-dir",
        str(tiny_fashion_mnist),
    ]
    assert deploybench_main.main(argv) == 1  # something failed: like `optimize all`, exit 1
    captured = capsys.readouterr()
    failed = [line for line in captured.out.splitlines() if line.startswith("failed: ")]
    why = "a forward pass on a batch of fashion-mnist images (2, 1, 28, 28) failed: RuntimeError: this architecture is "
    why += "broken"
    assert failed == [f"failed: tests_user_arch:broken: train: tests_user_arch:broken: {why}"] * 2
    assert "Traceback" not in captured.out
    assert (captured.out + captured.err).count("tests_user_arch:broken stopped at train after") == 2
    assert Workspace(tmp_path / "ws").variants() == []  # nothing of a failed training stays
    assert out.is_file()


def test_pipeline_rejects_unknown_models_before_work(tmp_path, capsys):
    argv = ["pipeline", "--dataset", "fashion-mnist", "--models", "lenet,nope", "--workspace", str(tmp_path / "ws")]
    assert deploybench_main.main(argv) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert Workspace(tmp_path / "ws").variants() == []


def test_a_damaged_store_stops_the_whole_run(tmp_path, tiny_fashion_mnist, capsys, monkeypatch):
    # One model's failure lets the others go on; a damaged store is every model's: the run stops at once.
    import deploybench.pipeline as pipeline
    from deploybench.errors import DamagedStore

    tried = []

    def damaged(ws, model, *args, **kwargs):
        tried.append(model)
        raise DamagedStore(f"{ws.root / 'deploybench.db'} is damaged: test")

    monkeypatch.setattr(pipeline, "train_model", damaged)
    argv = [
        "pipeline",
        "--dataset",
        "fashion-mnist",
        "--models",
        "lenet,simple-cnn",
        "--epochs",
        "1",
        "--quick",
        "--workspace",
        str(tmp_path / "ws"),
        "--data-dir",
        str(tiny_fashion_mnist),
        "--out",
        str(tmp_path / "index.html"),
    ]
    assert deploybench_main.main(argv) == 1
    err = capsys.readouterr().err
    assert tried == ["lenet"]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: workspace database: {tmp_path / 'ws' / 'deploybench.db'} is damaged: test"
    ]


def test_a_time_budget_bounds_the_prune_chains_finetuning_and_qat_too(trained_workspace, monkeypatch, tmp_path):
    # Unbounded, pruning's two fine-tuning epochs or QAT's one take longer than the budgeted training for a model
    # that trains under an epoch in it; with a budget, `optimize all` gets its share for each.
    import deploybench.pipeline as pipeline

    ws, trained, data_dir = trained_workspace
    given = []
    monkeypatch.setattr(pipeline, "train_model", lambda *a, **k: (trained, False))
    monkeypatch.setattr(
        pipeline, "optimize_all", lambda *a, **k: given.append((k.get("finetune_minutes"), k.get("qat_minutes"))) or []
    )
    monkeypatch.setattr(pipeline, "profile_variants", lambda *a, **k: [])
    monkeypatch.setattr(pipeline, "build_report", lambda ws, out: out)
    for budget in (10.0, None):
        pipeline.run_pipeline(
            ws, "fashion-mnist", ["lenet"], data_dir=data_dir, budget_minutes=budget, log=lambda line: None
        )
    share = 10.0 * pipeline.RETRAIN_SHARE
    assert given == [(share, share), (None, None)] and 0 < pipeline.RETRAIN_SHARE < 1
