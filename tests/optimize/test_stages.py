"""Each stage on the tiny trained lenet: recorded variant, reuse, fresh-process reload, parity, atomic failure."""

import pytest
import torch

from deploybench.artifacts.formats import load_module
from deploybench.errors import UserError
from deploybench.optimize.base import get_stage, list_stages
from deploybench.optimize.quantize import METHODS
from deploybench.profile.accuracy import evaluating_backend
from deploybench.train.engine import CUDA_LOADER_WORKERS

RECORDED = ("accuracy_top1", "accuracy_top5", "agreement_top1", "params", "macs", "predictions_sha256", "produced_by")


@pytest.fixture(scope="module")
def made(_trained_lenet_workspace, tiny_fashion_mnist, tmp_path_factory):
    """(ws, trained, data_dir, {name: variant}): every stage run once on a private copy of the trained lenet."""
    import shutil

    from deploybench.store import Workspace

    src, vid = _trained_lenet_workspace
    root = tmp_path_factory.mktemp("optimize") / "ws"
    shutil.copytree(src, root)
    ws = Workspace(root)
    trained = ws.get_variant(vid)
    out = {"export": get_stage("export")().run(ws, trained, tiny_fashion_mnist)}
    for method in ("int8-pt2e", "int8-ort", "dynamic", "dynamic-pt2e", "bf16", "qat"):
        out[method] = get_stage("quantize")(method=method, calib_size=16).run(ws, trained, tiny_fashion_mnist)
    for importance in ("magnitude", "taylor", "lamp"):
        out[f"prune-{importance}"] = get_stage("prune")(
            ratio=0.5, importance=importance, finetune_epochs=1, distill=True, iterative_steps=2
        ).run(ws, trained, tiny_fashion_mnist)
    out["prune-int8-ort"] = get_stage("quantize")(method="int8-ort", calib_size=8).run(
        ws, out["prune-magnitude"], tiny_fashion_mnist
    )
    return ws, trained, tiny_fashion_mnist, out


def test_every_variant_reloads_in_a_fresh_process(made, reload_fresh):
    ws, _, data_dir, out = made
    reload_fresh(ws, list(out.values()), data_dir)


def test_a_stage_found_in_the_store_evaluates_nothing(made, monkeypatch):
    # `optimize all` and the main job run every chain again; what is already made must come back without a
    # pass over the test split: finding a variant costs nothing, making it is what takes time.
    from deploybench.optimize import base

    ws, trained, data_dir, out = made

    def refuse(*_a, **_k):
        raise AssertionError("a stored variant was evaluated again")

    monkeypatch.setattr(base, "_LOGITS", {})
    monkeypatch.setattr(base, "evaluate_variant", refuse)
    assert get_stage("export")().run(ws, trained, data_dir).id == out["export"].id
    assert (
        get_stage("quantize")(method="int8-ort", calib_size=8).run(ws, out["prune-magnitude"], data_dir).id
        == out["prune-int8-ort"].id
    )  # through ensure_onnx's export of the pruned parent
    assert (
        get_stage("prune")(ratio=0.5, importance="lamp", finetune_epochs=1, distill=True, iterative_steps=2)
        .run(ws, trained, data_dir)
        .id
        == out["prune-lamp"].id
    )


def test_a_chain_evaluates_each_variant_once(trained_workspace, monkeypatch):
    # export -> int8-ort: the export's test-split logits, computed on its stored files when it was made, serve
    # its parity check and are the ones int8-ort compares its own with; computing them again would be one more
    # pass for nothing.
    from deploybench.optimize import base

    ws, trained, data_dir = trained_workspace
    monkeypatch.setattr(base, "_LOGITS", {})
    real, passes = base.evaluate_variant, []

    def counted(variant, images, *a, **k):
        passes.append(variant.format)
        return real(variant, images, *a, **k)

    monkeypatch.setattr(base, "evaluate_variant", counted)
    exported = get_stage("export")().run(ws, trained, data_dir)
    quantized = get_stage("quantize")(method="int8-ort", calib_size=8).run(ws, exported, data_dir)
    assert passes == ["torch-state", "onnx", "onnx-int8"]  # the trained parent once, then each made variant once
    fresh = base.predict(exported, base.stage_data(ws, exported, data_dir))[1]
    assert torch.equal(base._LOGITS[(exported.id, str(data_dir))], fresh)  # what a new evaluation gives
    assert quantized.metrics["agreement_top1"] is not None


def _check_recorded(ws, v, parent, stage, fmt):
    assert v.parent_id == parent.id and v.stage == stage and v.format == fmt
    assert v.stages == parent.stages + [stage]
    assert v.files and all((v.path / f).is_file() for f in v.files)
    assert v.size_bytes == sum((v.path / f).stat().st_size for f in v.files)
    assert len(v.sha256) == 64
    for key in RECORDED:
        assert v.metrics.get(key) is not None, key
    assert v.metrics["test_images"] == 20  # the full (tiny) test split
    assert v.metrics["produced_by"]["torch"] == torch.__version__
    for key in ("arch", "num_classes", "in_channels", "image_size", "dataset"):
        assert v.config[key] == parent.config[key]


def test_registry():
    assert list_stages() == ["export", "prune", "quantize"]
    with pytest.raises(UserError, match="unknown stage 'nope'; choose one of: export, prune, quantize"):
        get_stage("nope")
    with pytest.raises(UserError, match="unknown quantization method"):
        get_stage("quantize")(method="int4")


def test_export_parity_and_reuse(made):
    ws, trained, data_dir, out = made
    v = out["export"]
    _check_recorded(ws, v, trained, "export", "onnx")
    assert v.files == ["model.onnx", "model.onnx.data"]  # weights outside the graph, both counted in the size
    m = v.metrics
    assert m["exporter"] == "dynamo" and m["opset"] == 18
    assert m["parity_agreement_top1"] == 1.0 and m["parity_max_abs_logit_error"] < 1e-4
    import onnx

    onnx.checker.check_model(str(v.path / "model.onnx"), full_check=True)
    import onnxruntime as ort  # the batch axis is dynamic

    sess = ort.InferenceSession(str(v.path / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        assert sess.run(None, {sess.get_inputs()[0].name: torch.randn(n, 1, 28, 28).numpy()})[0].shape == (n, 10)
    before = len(ws.variants())
    again = get_stage("export")().run(ws, trained, data_dir)
    assert again.id == v.id and again.created_at == v.created_at and len(ws.variants()) == before


@pytest.mark.parametrize(
    "method,fmt,stages",
    [
        ("int8-pt2e", "torch-export-int8", ["train", "quantize"]),
        ("int8-ort", "onnx-int8", ["train", "export", "quantize"]),
        ("dynamic", "torch-export", ["train", "quantize"]),
        ("dynamic-pt2e", "torch-export-int8", ["train", "quantize"]),
        ("bf16", "torch-bf16", ["train", "quantize"]),
        ("qat", "torch-export-int8", ["train", "quantize"]),
    ],
)
def test_quantize_methods(made, method, fmt, stages):
    ws, trained, data_dir, out = made
    v = out[method]
    parent = ws.get_variant(v.parent_id)
    _check_recorded(ws, v, parent, "quantize", fmt)
    assert v.stages == stages and v.config["method"] == method
    assert v.metrics["agreement_top1"] >= 0.9  # lenet's logits are far apart: int8 keeps its predictions
    if method in ("int8-pt2e", "int8-ort"):
        assert v.metrics["calibration_images"] == 16 and v.config["calib_size"] == 16
    if method == "dynamic":  # lenet's Linear layers hold most weights: the only note is `optimize all`'s reason
        assert v.metrics["note"] == METHODS["dynamic"].not_worth_it()
    if method == "bf16":
        assert "calib_size" not in v.config  # options a method ignores do not split its variants
        assert v.metrics["note"] == METHODS["bf16"].not_worth_it()  # says so where bf16 is emulated
        assert "makes it anyway" not in (v.metrics["note"] or "")  # that is for `optimize all`'s skip line
    if fmt.startswith("torch"):
        assert load_module(v)(torch.randn(1, 1, 28, 28)).shape == (1, 10)  # batch 1 runs too


def test_int8_ort_reduce_range_defaults_to_the_cpu_and_is_part_of_the_id(made):
    """7-bit weights exactly where the CPU lacks VNNI (8-bit saturates there and costs accuracy); the
    resolved value is in the config, so forcing the other one makes another variant."""
    from deploybench.platform.env import has_int8_dot_product

    ws, trained, data_dir, out = made
    v = out["int8-ort"]
    assert v.config["reduce_range"] is (not has_int8_dot_product())
    assert v.metrics["reduce_range"] is v.config["reduce_range"]
    other = get_stage("quantize")(method="int8-ort", calib_size=16, reduce_range=not v.config["reduce_range"])
    assert other.run(ws, trained, data_dir).id != v.id


@pytest.mark.parametrize("method", ["int8-pt2e", "qat"])
def test_int8_programs_hold_only_int8_weights(made, method):
    v = made[3][method]
    import torchao.quantization.pt2e  # noqa: F401

    program = torch.export.load(str(v.path / "model.pt2"))
    big = {k: t.dtype for k, t in program.state_dict.items() if t.dim() >= 2}
    assert big and set(big.values()) == {torch.int8}, big


def test_dynamic_pt2e_makes_only_the_linear_weights_int8(made):
    # As torchao's `dynamic`: nn.Linear only (lenet's three), its convolutions stay in fp32.
    v = made[3]["dynamic-pt2e"]
    import torchao.quantization.pt2e  # noqa: F401

    weights = torch.export.load(str(v.path / "model.pt2")).state_dict.values()
    assert {t.dtype for t in weights if t.dim() == 2} == {torch.int8}  # Linear
    assert {t.dtype for t in weights if t.dim() == 4} == {torch.float32}  # Conv2d
    assert v.metrics["quantized_linear_layers"] == 3 and v.metrics["note"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fp16_needs_gpu(trained_workspace):
    ws, trained, data_dir = trained_workspace
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        get_stage("quantize")(method="fp16").run(ws, trained, data_dir)


def test_each_format_is_evaluated_on_its_own_runtime_and_only_half_precision_on_a_gpu(monkeypatch):
    from types import SimpleNamespace

    def on(fmt):
        return evaluating_backend(SimpleNamespace(format=fmt))

    for available in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda available=available: available)
        assert (on("onnx"), on("onnx-int8"), on("openvino-ir")) == ("ort-cpu", "ort-cpu", "openvino-cpu")
        # fp32 and int8 stay on the CPU, where they are measured by default
        assert {on(f) for f in ("torch-state", "torch-pruned", "torch-export", "torch-export-int8")} == {"torch-cpu"}
        assert {on("torch-fp16"), on("torch-bf16")} == {"torch-cuda" if available else "torch-cpu"}


@pytest.mark.gpu
@pytest.mark.parametrize("method, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_on_a_gpu_keeps_the_predictions(trained_workspace, method, dtype):
    ws, trained, data_dir = trained_workspace
    assert METHODS[method].left_out_of_all() is None  # on a GPU `optimize all` makes both
    v = get_stage("quantize")(method=method).run(ws, trained, data_dir)
    assert v.metrics["accuracy_evaluated_by"]["backend"] == "torch-cuda"  # there, not emulated on the CPU
    assert v.format == f"torch-{method}" and v.metrics["dtype"] == str(dtype).removeprefix("torch.")
    weights = torch.load(v.path / "model.pt", weights_only=True)["state_dict"]
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {dtype}
    assert v.metrics["note"] is None  # on a GPU bf16 is native: no "emulated" warning
    assert abs(v.metrics["accuracy_top1"] - trained.metrics["accuracy_top1"]) <= 0.051  # 1 of 20 images


@pytest.mark.gpu
def test_prune_fine_tunes_on_the_gpu_as_a_variant_of_its_own(trained_workspace, monkeypatch):
    ws, trained, data_dir = trained_workspace
    v = get_stage("prune")(ratio=0.5, finetune_epochs=1, distill=True).run(ws, trained, data_dir)
    assert v.metrics["finetune_device"] == "cuda" and v.config["device"] == "cuda"
    assert v.config["loader_workers"] == CUDA_LOADER_WORKERS
    saved = torch.load(v.path / "model.pt", weights_only=True)["state_dict"]
    assert {t.device.type for t in saved.values()} == {"cpu"}
    assert v.metrics["params"] < v.metrics["params_before"] / 2 and v.metrics["agreement_top1"] > 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    on_cpu = get_stage("prune")(ratio=0.5, finetune_epochs=1, distill=True).run(ws, trained, data_dir)
    assert on_cpu.metrics["finetune_device"] == "cpu" and "device" not in on_cpu.config and on_cpu.id != v.id


@pytest.mark.parametrize("importance", ["magnitude", "taylor", "lamp"])
def test_prune_distill(made, importance):
    ws, trained, data_dir, out = made
    v = out[f"prune-{importance}"]
    _check_recorded(ws, v, trained, "prune", "torch-pruned")
    m = v.metrics
    assert m["params_before"] == 61706 and m["params"] < m["params_before"] / 2
    assert m["macs"] < m["macs_before"] / 2 and m["macs_reduction"] > 2
    assert len(m["finetune_history"]) == 1
    on_gpu = torch.cuda.is_available()  # fine-tuning follows training onto the GPU, and the id says so
    assert m["finetune_device"] == ("cuda" if on_gpu else "cpu") and ("device" in v.config) == on_gpu
    saved = torch.load(v.path / "model.pt", weights_only=True)  # no pickled module
    assert set(saved) == {"state_dict", "attributes"}
    if importance == "magnitude":  # prune -> export -> int8-ort chains on the pruned shapes
        q = out["prune-int8-ort"]
        assert q.stages == ["train", "prune", "export", "quantize"] and q.metrics["params"] == m["params"]


def test_prune_bn_scale_on_a_model_without_bn_says_so(trained_workspace):
    ws, trained, data_dir = trained_workspace
    v = get_stage("prune")(ratio=0.5, importance="bn-scale", finetune_epochs=0).run(ws, trained, data_dir)
    assert v.metrics["params"] == v.metrics["params_before"] and "found nothing to prune" in v.metrics["note"]
    assert v.metrics["finetune_device"] is None and v.metrics["finetune_history"] == []  # nothing was fine-tuned


def test_prune_fine_tunes_with_loader_workers_as_a_variant_of_its_own(trained_workspace, monkeypatch):
    # An image folder's GPU default (workers) exercised on the CPU: the fine-tuning loader runs worker processes,
    # and the variant records them, since their random streams shape the weights.
    from deploybench.train import engine

    ws, trained, data_dir = trained_workspace
    monkeypatch.setattr(engine, "device_resident", lambda dataset: False)  # read as an image folder is
    stage = get_stage("prune")(ratio=0.5, finetune_epochs=1, distill=True)
    plain = stage.run(ws, trained, data_dir)
    monkeypatch.setattr(engine, "default_workers", lambda device: 2)
    with_workers = stage.run(ws, trained, data_dir)
    assert with_workers.config["loader_workers"] == 2 and "loader_workers" not in plain.config
    assert with_workers.id != plain.id and with_workers.metrics["finetune_device"] == "cpu"
    a, b = (torch.load(v.path / "model.pt", weights_only=True)["state_dict"] for v in (plain, with_workers))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # other augmentation draws, other weights


def test_failing_stage_leaves_nothing(trained_workspace, monkeypatch):
    ws, trained, data_dir = trained_workspace
    import deploybench.optimize.export as export

    monkeypatch.setattr(export, "MIN_AGREEMENT", 1.01)  # parity can never pass
    before = {v.id for v in ws.variants()}
    with pytest.raises(UserError, match="disagrees with PyTorch"):
        get_stage("export")().run(ws, trained, data_dir)
    assert {v.id for v in ws.variants()} == before
    folder = ws.artifact_dir(trained.model, trained.dataset, "x").parent
    assert sorted(p.name for p in folder.iterdir()) == [trained.id]  # no variant folder, no temp folder


def test_stage_rejects_wrong_parent_format(made):
    ws, trained, data_dir, out = made
    onnx_v = out["export"]
    with pytest.raises(UserError, match="needs an fp32 PyTorch variant"):
        get_stage("prune")(ratio=0.5, finetune_epochs=0).run(ws, onnx_v, data_dir)
    with pytest.raises(UserError, match="export needs a PyTorch variant"):
        get_stage("export")().run(ws, onnx_v, data_dir)


def test_export_records_the_opset_its_file_holds(trained_workspace, monkeypatch):
    """The dynamo exporter builds at opset 18 and converts down; a conversion that fails keeps 18. An export
    whose file does not hold the asked opset is refused rather than recorded under the asked one."""
    import onnx

    import deploybench.optimize.export as export

    ws, trained, data_dir = trained_workspace
    v = get_stage("export")(opset=17).run(ws, trained, data_dir)
    held = {i.domain: i.version for i in onnx.load(str(v.path / "model.onnx"), load_external_data=False).opset_import}
    assert v.config["opset"] == v.metrics["opset"] == held[""] == 17
    real = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda model, example, path, opset: real(model, example, path, 18))
    with pytest.raises(UserError, match="asked for ONNX opset 16, the dynamo exporter wrote opset 18"):
        get_stage("export")(opset=16).run(ws, trained, data_dir)
    assert [x.config["opset"] for x in ws.variants("lenet") if x.stage == "export"] == [17]


def test_a_derived_variant_is_calibrated_and_validated_on_its_roots_split(
    tmp_path, tiny_fashion_mnist, random_root, monkeypatch
):
    """A root trained with `--seed 7` held out other training images than seed 0 does: its quantized child must
    calibrate on the root's training images only, and `search` must select on the root's own validation images."""
    from torch.utils.data import DataLoader

    from deploybench.data import load_splits
    from deploybench.optimize import base
    from deploybench.optimize.base import stage_data, validation_result
    from deploybench.store import Workspace
    from deploybench.train.engine import evaluate

    ws = Workspace(tmp_path / "ws")
    root = random_root(ws, "lenet", tiny_fashion_mnist, seed=7)
    seen = []
    real = base.calibration_subset

    def spy(splits, n, seed=0):
        subset = real(splits, n, seed)
        seen.extend(subset.indices)
        return subset

    monkeypatch.setattr(base, "calibration_subset", spy)
    child = get_stage("quantize")(method="int8-pt2e", calib_size=16).run(ws, root, tiny_fashion_mnist)
    mine = load_splits("fashion-mnist", tiny_fashion_mnist, seed=7, augment=False)
    seed0 = load_splits("fashion-mnist", tiny_fashion_mnist, seed=0, augment=False)
    assert sorted(mine.val.indices) != sorted(seed0.val.indices)  # else the test could not tell the two apart
    assert seen and set(seen) <= set(mine.train.indices)
    assert stage_data(ws, child, tiny_fashion_mnist).splits.val.indices == mine.val.indices
    model = load_module(root).eval()
    want = evaluate(model, DataLoader(mine.val, batch_size=256), torch.device("cpu"), mine.info.num_classes)
    assert validation_result(ws, root, tiny_fashion_mnist).loss == pytest.approx(want.loss)


def _budgeted_qat(monkeypatch, tmp_path, *, minutes, epochs):
    """QAT of a tiny conv net on 2,560 random 1x8x8 images (40 steps of 64 an epoch) on a clock that reads 10 s
    more at each look, so a budget sizes the run to the same steps on any machine. Returns (what `_qat` records,
    the learning rate it ended at)."""
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    from deploybench.optimize import quantize
    from deploybench.train import engine

    ticks = iter(range(0, 10**6, 10))
    monkeypatch.setattr(engine.BudgetClock, "clock", staticmethod(lambda: float(next(ticks))))
    made_scheds = []
    monkeypatch.setattr(
        quantize, "make_scheduler", lambda *a: made_scheds.append(engine.make_scheduler(*a)) or made_scheds[-1]
    )
    torch.manual_seed(0)
    images = torch.randn(2560, 1, 8, 8)
    data = SimpleNamespace(
        splits=SimpleNamespace(train=TensorDataset(images, torch.randint(0, 3, (2560,)))),
        example=lambda n: images[:n],
    )
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)
    )
    stage = get_stage("quantize")(method="qat", qat_epochs=epochs, qat_minutes=minutes)
    tmp_path.mkdir(parents=True)
    recorded = quantize._qat(stage, net, data, tmp_path)
    (sched,) = made_scheds
    return recorded, sched.get_last_lr()[0]


def test_a_qat_budget_sizes_the_cosine_to_the_steps_that_fit(monkeypatch, tmp_path):
    # Timed over steps 6-25 at 0.5 s a step (10 s of the fake clock over 20 steps), with 30 s gone at the sizing
    # and 60 s allowed, it takes 25 + 60 steps of the 120 of three epochs: 2.12 epochs.
    recorded, lr = _budgeted_qat(monkeypatch, tmp_path / "a", minutes=1.0, epochs=3)
    assert recorded == dict(qat_images=85 * 64, qat_steps=85, qat_epochs_done=2.12)
    assert lr < 1e-9  # the cosine spans the 85 steps taken, not the 120 of three epochs
    whole, end = _budgeted_qat(monkeypatch, tmp_path / "b", minutes=None, epochs=1)
    assert whole == dict(qat_images=2560, qat_steps=40, qat_epochs_done=1.0) and end < 1e-9
    roomy, _ = _budgeted_qat(monkeypatch, tmp_path / "c", minutes=600.0, epochs=1)  # does not bind: the epoch does
    assert roomy == whole


def test_qat_minutes_enters_the_id_of_qat_only_when_set_and_must_be_positive(trained_workspace):
    ws, trained, data_dir = trained_workspace
    quantize = get_stage("quantize")
    with pytest.raises(UserError, match="--qat-minutes must be above 0"):
        quantize(method="qat", qat_minutes=0)
    plain = quantize(method="qat", calib_size=16).run(ws, trained, data_dir)
    timed = quantize(method="qat", calib_size=16, qat_minutes=30).run(ws, trained, data_dir)
    assert "qat_minutes" not in plain.config and timed.config["qat_minutes"] == 30 and timed.id != plain.id
    assert timed.metrics["qat_steps"] == plain.metrics["qat_steps"]  # 30 minutes do not bind on a tiny split
    int8 = quantize(method="int8-pt2e", calib_size=16, qat_minutes=30).run(ws, trained, data_dir)
    assert "qat_minutes" not in int8.config


def test_a_quantize_variant_is_keyed_by_its_methods_own_options_that_are_set():
    """One rule (`QuantizeConfig.to_dict`) makes the config a variant is stored and found by, and the search's
    trial keys: the method's own options, less those left unset (`UNSET`), and `val_size` only where a sensitivity
    pass reads validation images."""
    quantize = get_stage("quantize")
    assert quantize(method="int8-pt2e").config.to_dict() == {"method": "int8-pt2e", "calib_size": 512, "seed": 0}
    assert quantize(method="int8-pt2e", float_layers="sensitive:2").config.to_dict() == {
        "method": "int8-pt2e",
        "calib_size": 512,
        "float_layers": "sensitive:2",
        "val_size": 1000,
        "seed": 0,
    }
    assert quantize(method="int8-pt2e", float_layers="depthwise").config.to_dict()["float_layers"] == "depthwise"
    assert "val_size" not in quantize(method="int8-pt2e", float_layers="depthwise").config.to_dict()
    assert quantize(method="qat", calib_size=16).config.to_dict() == {
        "method": "qat",
        "qat_epochs": 1,
        "qat_lr": 1e-3,
        "seed": 0,
    }
    assert quantize(method="qat", qat_minutes=3).config.to_dict()["qat_minutes"] == 3
    assert quantize(method="int8-nncf-ac").config.to_dict() == {
        "method": "int8-nncf-ac",
        "calib_size": 512,
        "max_drop": 0.01,
        "val_size": 1000,
        "seed": 0,
    }
    assert quantize(method="bf16", calib_size=16).config.to_dict() == {"method": "bf16"}
    assert set(quantize(method="int8-ort").config.to_dict()) == {
        "method",
        "calib_size",
        "calib_method",
        "reduce_range",
        "seed",
    }
