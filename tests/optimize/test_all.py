"""`optimize all` over every zoo architecture on tiny data (random-weight roots; the big ones are slow)."""

import pytest

from deploybench.models import list_models
from deploybench.optimize.pipeline import default_chains, optimize_all, run_chains, summary_table

BIG = {"vit-small", "resnet18", "resnet18-cifar", "resnet44v2", "mobilenetv2"}
# In CI's suite (`not slow`) the whole of `optimize all` runs on lenet and custom; the other small architectures
# run it in `make test-all` and only the export (with its parity check) in CI, which keeps `make test` in budget.
CI_FULL = {"lenet", "custom"}


def test_all_covers_every_required_chain():
    names = [c.name for c in default_chains()]
    assert names == [
        "export",
        "quantize:int8-pt2e",
        "quantize:int8-ort",
        "quantize:int8-nncf",
        "quantize:dynamic",
        "quantize:dynamic-pt2e",
        "quantize:bf16",
        "quantize:fp16",
        "quantize:qat",
        "prune",
        "prune→int8-pt2e",
        "prune→export",
        "prune→export→int8-ort",
    ]


@pytest.mark.parametrize(
    "arch", [a if a in CI_FULL else pytest.param(a, marks=pytest.mark.slow) for a in list_models()]
)
def test_every_architecture_goes_through_optimize_all(tmp_path, tiny_fashion_mnist, reload_fresh, random_root, arch):
    from deploybench.store import Workspace

    ws = Workspace(tmp_path / "ws")
    root = random_root(ws, arch, tiny_fashion_mnist)
    results = optimize_all(
        ws, root, tiny_fashion_mnist, progress=False, log=lambda *_: None, finetune_epochs=1, calib_size=16
    )  # QAT runs only when int8-pt2e loses > 1 point (tested on lenet)
    status = {r.name: (r.status, r.message) for r in results}
    failed = {k: v for k, v in status.items() if v[0] == "failed"}
    assert not failed, failed
    skipped = {k for k, v in status.items() if v[0] == "skipped"}
    assert skipped <= {"quantize:fp16", "quantize:qat", "quantize:bf16", "quantize:dynamic"}
    variants = {v.id: v for r in results for v in r.variants}
    # export, int8-pt2e, export→int8-ort, export→int8-nncf, dynamic-pt2e, prune, prune→int8-pt2e, prune→export,
    # prune→export→int8-ort (+ torchao's dynamic, bf16, fp16 and QAT where they run)
    assert len(variants) == 9 + sum(f"quantize:{m}" not in skipped for m in ("dynamic", "bf16", "fp16", "qat"))
    table = summary_table(root, results)
    assert all(v.id in table for v in variants.values())
    pruned = next(v for v in variants.values() if v.stages == ["train", "prune"])
    assert pruned.metrics["params"] < pruned.metrics["params_before"]
    reload_fresh(ws, list(variants.values()), tiny_fashion_mnist)


@pytest.mark.parametrize("arch", sorted(set(list_models()) - BIG - CI_FULL))
def test_small_architectures_export_with_parity(tmp_path, tiny_fashion_mnist, random_root, arch):
    from deploybench.optimize.base import get_stage
    from deploybench.store import Workspace

    ws = Workspace(tmp_path / "ws")
    root = random_root(ws, arch, tiny_fashion_mnist)
    exported = get_stage("export")().run(ws, root, tiny_fashion_mnist)
    assert exported.format == "onnx" and exported.metrics["agreement_top1"] >= 0.995


def test_a_failing_chain_does_not_stop_the_others(trained_workspace, monkeypatch):
    ws, trained, data_dir = trained_workspace
    import deploybench.optimize.export as export

    monkeypatch.setattr(export, "MIN_AGREEMENT", 1.01)
    chains = [
        c
        for c in default_chains(finetune_epochs=0, calib_size=8)
        if c.name in ("export", "quantize:dynamic-pt2e", "prune→export")
    ]
    before = {v.id for v in ws.variants()}
    results = run_chains(ws, trained, data_dir, chains, progress=False, log=lambda *_: None)
    assert [(r.name, r.status) for r in results] == [
        ("export", "failed"),
        ("quantize:dynamic-pt2e", "ok"),
        ("prune→export", "failed"),
    ]
    made = {v.id for v in ws.variants()} - before
    assert made == {results[1].variants[0].id, results[2].variants[0].id}  # dynamic and the prune step, nothing else
    assert "failed: export: ONNX export" in summary_table(trained, results)


@pytest.mark.parametrize("native", [True, False])
def test_all_leaves_emulated_bf16_out(monkeypatch, native):
    import deploybench.platform.env as env

    monkeypatch.setattr(env, "cpu_flags", lambda: frozenset({"avx2"} | ({"avx512_bf16"} if native else set())))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    (bf16,) = [c for c in default_chains() if c.name == "quantize:bf16"]
    reason = bf16.skip({})
    if native:
        assert reason is None
    else:
        assert "no native bf16" in reason and "--method bf16" in reason


@pytest.fixture
def int_mm_check():
    """`_int_mm_slow` measured afresh in this test (it caches one answer per process)."""
    from deploybench.optimize.quantize import _int_mm_slow

    _int_mm_slow.cache_clear()
    yield _int_mm_slow
    _int_mm_slow.cache_clear()


@pytest.mark.parametrize("int8_slower", [True, False])
def test_all_leaves_torchaos_dynamic_out_where_int_mm_is_slower_than_fp32(monkeypatch, int_mm_check, int8_slower):
    # Without CUDA, torchao's dynamic program multiplies with torch._int_mm, which on some CPUs is far slower
    # than fp32. The decision is timed on the machine: here `_int_mm` is replaced by a kernel that does no work
    # (faster than any fp32 product) or that also sleeps 20 ms (slower than any).
    import time

    import torch

    out = torch.zeros(64, 1536, dtype=torch.int32)
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: (time.sleep(0.02) if int8_slower else None, out)[1])
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    (dynamic,) = [c for c in default_chains() if c.name == "quantize:dynamic"]
    reason = dynamic.skip({})
    if int8_slower:
        assert "torch._int_mm" in reason and "measured now" in reason and "--method dynamic" in reason
    else:
        assert reason is None


def test_a_cpu_without_int_mm_leaves_torchaos_dynamic_out_instead_of_failing(monkeypatch, int_mm_check):
    import torch

    def missing(*_):
        raise RuntimeError("_int_mm_out_cpu not implemented")

    monkeypatch.setattr(torch, "_int_mm", missing)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert "does not run on this CPU: _int_mm_out_cpu not implemented" in int_mm_check()


def test_with_cuda_torchaos_dynamic_is_made_without_timing_anything(monkeypatch, int_mm_check):
    import torch

    def refuse(*_):
        raise AssertionError("timed _int_mm although CUDA is there")

    monkeypatch.setattr(torch, "_int_mm", refuse)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    assert int_mm_check() is None
