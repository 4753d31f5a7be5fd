"""Without a GPU, `ort-tensorrt` (and `ort-cuda`) say they are unavailable and name every missing piece: the CUDA
device, the onnxruntime-gpu package, TensorRT's libnvinfer. Tests that need CUDA are marked `gpu` and skip."""

import pytest
import torch

from deploybench.profile.backends import available_backends, get_backend

CPU_BUILD = ["AzureExecutionProvider", "CPUExecutionProvider"]
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def _fake_ort(monkeypatch, providers, tmp_path, cuda: bool):
    from deploybench.profile.backends import onnxruntime as backend_module

    fake = type(
        "FakeOrt",
        (),
        {
            "__file__": str(tmp_path / "onnxruntime" / "__init__.py"),  # no provider library beside it
            "get_available_providers": staticmethod(lambda: list(providers)),
        },
    )
    monkeypatch.setattr(backend_module, "_ort", lambda: fake)
    monkeypatch.setattr(backend_module, "cuda_available", lambda: (True, "") if cuda else (False, "no CUDA device"))


def test_the_cpu_onnxruntime_without_cuda_names_every_missing_piece(monkeypatch, tmp_path):
    _fake_ort(monkeypatch, CPU_BUILD, tmp_path, cuda=False)
    ok, why = get_backend("ort-tensorrt").available()
    assert not ok
    assert why == (
        "no CUDA device; TensorrtExecutionProvider is not in this onnxruntime build (AzureExecutionProvider, "
        "CPUExecutionProvider): it needs the onnxruntime-gpu package in place of onnxruntime, and TensorRT's "
        "libnvinfer (a separate install)"
    )
    ok, why = get_backend("ort-cuda").available()
    assert not ok and why.endswith("it needs the onnxruntime-gpu package in place of onnxruntime")
    assert get_backend("ort-cpu").available() == (True, "")


def test_the_gpu_build_without_a_cuda_device_says_only_that(monkeypatch, tmp_path):
    _fake_ort(monkeypatch, GPU_BUILD, tmp_path, cuda=False)
    assert get_backend("ort-tensorrt").available() == (False, "no CUDA device")


def test_the_gpu_build_with_cuda_and_no_provider_library_file_is_available(monkeypatch, tmp_path):
    _fake_ort(monkeypatch, GPU_BUILD, tmp_path, cuda=True)
    assert get_backend("ort-tensorrt").available() == (True, "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path; this machine has CUDA")
def test_on_this_machine_without_cuda_tensorrt_is_unavailable_and_says_why():
    import onnxruntime

    ok, why = get_backend("ort-tensorrt").available()
    assert not ok and why.startswith("no CUDA device (torch.cuda.is_available() is False)")
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        assert "onnxruntime-gpu" in why and "libnvinfer" in why
    assert "ort-tensorrt" not in available_backends()


def test_profiling_an_unavailable_tensorrt_logs_the_reason_and_skips_it(monkeypatch, tmp_path):
    from deploybench.profile.runner import _resolve_backends

    _fake_ort(monkeypatch, CPU_BUILD, tmp_path, cuda=False)
    lines = []
    assert _resolve_backends(["ort-tensorrt", "ort-cpu"], lines.append) == ["ort-cpu"]
    assert lines == [
        "ort-tensorrt: unavailable here (no CUDA device; TensorrtExecutionProvider is not in this onnxruntime build "
        "(AzureExecutionProvider, CPUExecutionProvider): it needs the onnxruntime-gpu package in place of "
        "onnxruntime, and TensorRT's libnvinfer (a separate install)); skipped"
    ]
