"""Benchmarks of MAC counting, ONNX export and one training step, each gated on a deterministic fact of what
it produced (the count, a checked ONNX file, a finite loss); and the deterministic facts of the zoo's variants:
parameters, MACs, sizes and accuracy on fixed data through each backend."""

import onnx
import pytest
import torch
import torchvision

from benchzoo import CPU_BACKENDS, KINDS, MODELS
from deploybench.models.macs import count_macs
from deploybench.profile import accuracy
from deploybench.profile.static import static_metrics


def test_mac_counting_resnet18(benchmark):
    model = torchvision.models.resnet18(num_classes=1000)
    counted = benchmark.pedantic(count_macs, args=(model, (3, 224, 224)), rounds=3, warmup_rounds=1)
    assert counted["macs"] == 1_819_065_856  # the published 1.82 GMACs
    assert counted["params"] == 11_689_512


@pytest.mark.parametrize("model", MODELS)
def test_onnx_export(benchmark, zoo, model, tmp_path):
    """The export stage's exporter (dynamo, dynamic batch, external data), then the full ONNX check."""
    from deploybench.artifacts.formats import load_module
    from deploybench.optimize.export import export_onnx
    from deploybench.profile.static import input_shape, root_config

    fp32 = zoo.variants[model]["fp32"]
    module = load_module(fp32).eval()
    example = torch.zeros(2, *input_shape(root_config(zoo.ws, fp32)))
    out = tmp_path / "model.onnx"
    used = benchmark.pedantic(export_onnx, args=(module, example, out, 18), rounds=2, warmup_rounds=0)
    assert used == "dynamo"
    onnx.checker.check_model(str(out), full_check=True)


@pytest.mark.parametrize("model", ["lenet", "custom"])
def test_training_step(benchmark, model):
    """One step of the real training engine (forward, loss, backward, optimizer and scheduler) at the
    recipe's batch size on Fashion-MNIST-shaped data."""
    from deploybench.data import dataset_info
    from deploybench.models.identity import build_model, model_config
    from deploybench.train.engine import make_optimizer, make_scheduler, train_one_epoch
    from deploybench.train.recipes import default_recipe

    recipe = default_recipe(model)
    torch.manual_seed(0)
    net = build_model(
        dict(model_config(model, dataset_info("fashion-mnist")), dataset="fashion-mnist", recipe=recipe.to_dict())
    )
    opt = make_optimizer(net, recipe)
    sched = make_scheduler(opt, recipe, total_steps=10**6)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    batch = [(torch.randn(recipe.batch_size, 1, 28, 28), torch.randint(0, 10, (recipe.batch_size,)))]
    step = lambda: train_one_epoch(net, batch, opt, sched, scaler, torch.device("cpu"), recipe)  # noqa: E731
    result = benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    assert torch.isfinite(torch.tensor(result["loss"]))


@pytest.mark.parametrize("model", MODELS)
def test_variant_facts(zoo, model):
    """Parameters, MACs and sizes as the profiler counts them: pruning at 0.5 at least halves MACs and cuts
    parameters, the ONNX export keeps the parameters, and int8 variants are at least 1.5x smaller than fp32
    on disk (not the 4x of the weights alone: a torch.export program carries a fixed overhead that weighs on
    models this small)."""
    made = zoo.variants[model]
    facts = {k: static_metrics(zoo.ws, v) for k, v in made.items()}
    assert facts["pruned"]["macs"] * 2 <= facts["fp32"]["macs"]
    assert facts["pruned"]["params"] < facts["fp32"]["params"]
    assert facts["fp32"]["params"] == made["fp32"].metrics["params"]
    assert facts["fp32-onnx"]["macs"] == facts["fp32"]["macs"]
    for kind in ("int8-pt2e", "int8-ort"):
        assert facts[kind]["size_bytes"] * 1.5 <= facts["fp32"]["size_bytes"], (kind, facts[kind]["size_bytes"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("model", MODELS)
def test_accuracy_on_fixed_data(zoo, loaded, model, kind, backend):
    """Through every backend, each variant's top-1 on the fixed test split is the one its stage recorded."""
    variant = zoo.for_backend(model, kind, backend)
    impl, _ = loaded(variant, backend, 64)
    measured = accuracy.backend_accuracy(impl, accuracy.test_split(variant.dataset, zoo.data_dir), 64)
    assert measured["accuracy_top1"] == pytest.approx(variant.metrics["accuracy_top1"], abs=1 / 64 + 1e-9)
