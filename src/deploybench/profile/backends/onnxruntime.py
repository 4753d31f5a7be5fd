"""`ort-cpu`, `ort-cuda`, `ort-tensorrt`: ONNX Runtime on an ONNX variant.

ONNX Runtime silently falls back to the CPU provider when the one asked for cannot start, so after creating
the session we check `session.get_providers()[0]` and refuse (a recorded skip) when it is not the provider
asked for. On GPU, inputs and outputs stay on the device through IOBinding, so timing covers the model only.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from deploybench.artifacts import formats
from deploybench.profile.backends.base import Backend, BackendSkip, cuda_available, register_backend
from deploybench.store import Variant

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _ort():
    import onnxruntime

    return onnxruntime


class OrtBackend(Backend):
    provider = "CPUExecutionProvider"
    provider_options: dict = {}
    # What the provider needs that the plain onnxruntime wheel lacks, named when this build lacks the provider.
    needs = ""

    def __init__(self):
        self.session = None
        self.binding = None

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") or (False, every missing piece: no CUDA device, the provider not in this onnxruntime
        build and what it comes with), so one line says all that a GPU provider lacks here."""
        try:
            providers = _ort().get_available_providers()
        except ImportError as exc:
            return False, f"onnxruntime is not installed ({exc})"
        missing = []
        if cls.device == "cuda" and not (cuda := cuda_available())[0]:
            missing.append(cuda[1])
        if cls.provider not in providers:
            missing.append(
                f"{cls.provider} is not in this onnxruntime build ({', '.join(providers)})"
                + (f": it needs {cls.needs}" if cls.needs else "")
            )
        return (False, "; ".join(missing)) if missing else (True, "")

    @classmethod
    def supports(cls, variant: Variant) -> tuple[bool, str]:
        if variant.format not in formats.ONNX_FORMATS:
            return False, f"format {variant.format} is not ONNX"
        return True, ""

    def _providers(self) -> list:
        return [(self.provider, dict(self.provider_options))]

    @classmethod
    def preload(cls) -> None:
        _ort()

    def load(self, variant: Variant, batch_size: int, threads: int) -> None:
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(formats.onnx_path(variant)), sess_options=opts, providers=self._providers()
        )
        got = self.session.get_providers()[0]
        if got != self.provider:
            raise BackendSkip(f"ONNX Runtime fell back to {got} instead of {self.provider}")
        inp = self.session.get_inputs()[0]
        if isinstance(inp.shape[0], int) and inp.shape[0] != batch_size:
            raise BackendSkip(f"the ONNX model has a fixed batch size of {inp.shape[0]}")
        if inp.type not in _NUMPY_TYPES:
            raise BackendSkip(f"ONNX input type {inp.type} is not a float tensor")
        self.input_name, self.input_type = inp.name, _NUMPY_TYPES[inp.type]
        self.output_name = self.session.get_outputs()[0].name
        self.expect_inputs_of(variant)
        torch.set_num_threads(threads)  # the data pipeline around it

    def prepare(self, batch: torch.Tensor):
        self.check_input(batch)
        array = np.ascontiguousarray(batch.numpy().astype(self.input_type, copy=False))
        if self.device == "cpu":
            return {self.input_name: array}
        ort = _ort()
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output(self.output_name, "cuda", 0)
        return binding

    def run(self, inputs):
        if self.device == "cpu":
            return self.session.run([self.output_name], inputs)[0]
        self.session.run_with_iobinding(inputs)
        return inputs

    def logits(self, output) -> torch.Tensor:
        if self.device != "cpu":
            output = output.copy_outputs_to_cpu()[0]
        return torch.from_numpy(np.asarray(output, dtype=np.float32))

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        self.session = None


@register_backend
class OrtCPU(OrtBackend):
    name, device, provider = "ort-cpu", "cpu", "CPUExecutionProvider"


@register_backend
class OrtCUDA(OrtBackend):
    name, device, provider = "ort-cuda", "cuda", "CUDAExecutionProvider"
    needs = "the onnxruntime-gpu package in place of onnxruntime"

    def _providers(self) -> list:
        return [(self.provider, {"device_id": 0})]


@register_backend
class OrtTensorRT(OrtBackend):
    name, device, provider = "ort-tensorrt", "cuda", "TensorrtExecutionProvider"
    needs = "the onnxruntime-gpu package in place of onnxruntime, and TensorRT's libnvinfer (a separate install)"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """onnxruntime-gpu lists this provider whether or not TensorRT itself (libnvinfer, a separate install)
        is there; without it every session prints ORT's "EP Error" block and falls back to CUDA. Loading the
        provider's library resolves TensorRT's, as a session would."""
        ok, why = super().available()
        if not ok:
            return ok, why
        library = Path(_ort().__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
        if library.is_file():
            try:
                ctypes.CDLL(str(library))
            except OSError as exc:  # names the library it did not find, e.g. libnvinfer.so.10
                return False, f"{cls.provider} cannot load TensorRT ({exc}): install TensorRT (libnvinfer)"
        return True, ""

    def _providers(self) -> list:
        # Nodes TensorRT cannot take run on CUDA, never on the CPU.
        return [(self.provider, {"device_id": 0}), ("CUDAExecutionProvider", {"device_id": 0})]
