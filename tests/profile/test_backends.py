"""Each backend on the tiny trained lenet: it loads, runs, agrees with eager torch, and skips what it cannot run."""

import pytest
import torch

from deploybench.artifacts import formats
from deploybench.profile.backends import available_backends, backend_names, get_backend
from deploybench.profile.backends.base import BackendSkip
from deploybench.profile.static import input_shape, root_config


def _logits(backend_name, variant, ws, batch_size=4, threads=1):
    backend = get_backend(backend_name)()
    backend.load(variant, batch_size, threads)
    torch.manual_seed(0)
    x = torch.randn(batch_size, *input_shape(root_config(ws, variant)))
    out = backend.logits(backend.run(backend.prepare(x)))
    backend.synchronize()
    backend.close()
    return x, out


def test_registry_lists_every_runtime_and_cpu_ones_are_available():
    assert backend_names() == [
        "torch-cpu",
        "torch-cuda",
        "torch-compile-cpu",
        "torch-compile-cuda",
        "ort-cpu",
        "ort-cuda",
        "ort-tensorrt",
        "openvino-cpu",
    ]
    assert {"torch-cpu", "torch-compile-cpu", "ort-cpu"} <= set(available_backends())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
@pytest.mark.parametrize("name", ["torch-cuda", "torch-compile-cuda", "ort-cuda", "ort-tensorrt"])
def test_cuda_backends_report_unavailable_with_a_reason(name):
    ok, why = get_backend(name).available()
    assert not ok and why
    assert name not in available_backends()


def test_tensorrt_without_its_libraries_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    # onnxruntime-gpu lists TensorrtExecutionProvider without TensorRT installed: each session then prints
    # ORT's "EP Error" block and falls back to CUDA. The provider library that cannot load (here: not a shared
    # object) says so before any session.
    from deploybench.profile.backends import onnxruntime as backend_module

    capi = tmp_path / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / "libonnxruntime_providers_tensorrt.so").write_bytes(b"not a shared object")
    fake = type(
        "FakeOrt",
        (),
        {
            "__file__": str(tmp_path / "onnxruntime" / "__init__.py"),
            "get_available_providers": staticmethod(
                lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
            ),
        },
    )
    monkeypatch.setattr(backend_module, "_ort", lambda: fake)
    monkeypatch.setattr(backend_module, "cuda_available", lambda: (True, ""))
    ok, why = get_backend("ort-tensorrt").available()
    assert not ok and why.startswith("TensorrtExecutionProvider cannot load TensorRT (")
    assert get_backend("ort-cuda").available() == (True, "")


def test_torch_cpu_matches_the_module(trained_workspace):
    ws, trained, _ = trained_workspace
    x, out = _logits("torch-cpu", trained, ws)
    with torch.no_grad():
        expected = formats.load_module(trained)(x)
    assert out.shape == (4, 10)
    torch.testing.assert_close(out, expected)


def test_torch_compile_cpu_matches_eager(trained_workspace):
    ws, trained, _ = trained_workspace
    x, out = _logits("torch-compile-cpu", trained, ws, batch_size=2)
    with torch.no_grad():
        expected = formats.load_module(trained)(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_ort_cpu_matches_eager_and_runs_on_the_cpu_provider(onnx_workspace):
    ws, trained, onnx_variant, _ = onnx_workspace
    backend = get_backend("ort-cpu")()
    backend.load(onnx_variant, 3, 1)
    assert backend.session.get_providers()[0] == "CPUExecutionProvider"
    assert backend.session.get_session_options().intra_op_num_threads == 1
    x = torch.randn(3, 1, 28, 28)
    out = backend.logits(backend.run(backend.prepare(x)))
    with torch.no_grad():
        expected = formats.load_module(trained)(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_formats_a_backend_cannot_run_are_refused_with_a_reason(onnx_workspace):
    ws, trained, onnx_variant, _ = onnx_workspace
    for name in ("torch-cpu", "torch-compile-cpu"):
        ok, why = get_backend(name).supports(onnx_variant)
        assert not ok and "onnx" in why
    ok, why = get_backend("ort-cpu").supports(trained)
    assert not ok and "torch-state" in why


def test_fixed_batch_onnx_is_a_skip_at_other_batch_sizes(trained_workspace, make_onnx):
    ws, trained, _ = trained_workspace
    fixed = make_onnx(ws, trained, dynamic_batch=False, stage="export-fixed")
    with pytest.raises(BackendSkip, match="fixed batch size of 2"):
        get_backend("ort-cpu")().load(fixed, 1, 1)


# -- on a GPU (skipped without CUDA) ------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["torch-cuda", "torch-compile-cuda"])
def test_cuda_torch_backends_run_on_the_gpu_and_match_eager_cpu(trained_workspace, name):
    ws, trained, _ = trained_workspace
    backend = get_backend(name)()
    backend.load(trained, 4, 1)
    assert next(backend.module.parameters()).is_cuda
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    inputs = backend.prepare(x)
    assert inputs.is_cuda
    out = backend.logits(backend.run(inputs))
    backend.synchronize()
    assert backend.peak_memory_bytes() > 0
    backend.close()
    with torch.no_grad():
        expected = formats.load_module(trained)(x)
    # cuDNN may run fp32 convolutions in TF32 (10-bit mantissa): close, not bit-identical, to the CPU.
    torch.testing.assert_close(out.cpu().float(), expected, rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["ort-cuda", "ort-tensorrt"])
def test_ort_gpu_providers_really_run_or_skip_with_the_reason(onnx_workspace, name):
    ws, trained, onnx_variant, _ = onnx_workspace
    cls = get_backend(name)
    ok, why = cls.available()
    if not ok:  # e.g. the CPU-only onnxruntime wheel: the backend says so instead of falling back silently
        assert cls.provider in why
        pytest.skip(why)
    backend = cls()
    try:
        backend.load(onnx_variant, 3, 1)
    except BackendSkip as exc:
        # TensorRT's own libraries (libnvinfer) are a separate install from onnxruntime-gpu: without them ORT
        # falls back to CUDA, which the backend refuses rather than timing CUDA under TensorRT's name. CUDA
        # itself has no such excuse on a machine where its provider is listed.
        assert name == "ort-tensorrt" and "fell back to CUDAExecutionProvider" in str(exc), exc
        pytest.skip(str(exc))
    assert backend.session.get_providers()[0] == cls.provider
    x = torch.randn(3, 1, 28, 28)
    out = backend.logits(backend.run(backend.prepare(x)))
    backend.synchronize()
    backend.close()
    with torch.no_grad():
        expected = formats.load_module(trained)(x)
    torch.testing.assert_close(out.cpu().float(), expected, rtol=1e-2, atol=1e-2)


def test_the_listing_order_does_not_depend_on_which_backend_module_was_imported_first():
    import subprocess
    import sys

    code = (
        "from deploybench.profile.backends import openvino, onnxruntime; "
        "from deploybench.profile.backends import backend_names; print(','.join(backend_names()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(",") == backend_names()
