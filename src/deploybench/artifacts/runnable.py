"""Any variant as a callable on a float32 batch: torch formats through their loader, ONNX through ONNX Runtime,
OpenVINO IR through OpenVINO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from deploybench.artifacts.formats import ONNX_FORMATS, OPENVINO_FORMATS, load_module, onnx_path
from deploybench.errors import check_input_shape
from deploybench.store import Variant


class OrtModule(nn.Module):
    """An ONNX file run by ONNX Runtime (CPU) behind the nn.Module call interface, for evaluation."""

    def __init__(self, path: Path):
        super().__init__()
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name, self.path = inp.name, path
        self.input_chw = tuple(inp.shape[1:]) if all(isinstance(d, int) for d in inp.shape[1:]) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_chw is not None and len(self.input_chw) == 3:
            check_input_shape(x.shape, self.input_chw, f"ONNX session {self.path}")
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)


class OvModule(nn.Module):
    """An OpenVINO IR variant compiled for the CPU as the `openvino-cpu` backend compiles it (its default inference
    precision, which may be bf16), behind the nn.Module call interface, for evaluation."""

    def __init__(self, variant: Variant, threads: int | None = None):
        super().__init__()
        from deploybench.artifacts.openvino_runtime import compile_variant

        self.compiled = compile_variant(variant, threads or torch.get_num_threads())
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.inputs[0].get_partial_shape()
        dims = [d.get_length() if d.is_static else None for d in shape][1:]
        self.input_chw = tuple(dims) if len(dims) == 3 and None not in dims else None
        self.path = variant.path / "model.xml"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_chw is not None:
            check_input_shape(x.shape, self.input_chw, f"OpenVINO model {self.path}")
        out = self.request.infer([np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)])
        return torch.from_numpy(np.array(out[self.compiled.outputs[0]], dtype=np.float32))


def runnable(variant: Variant) -> nn.Module:
    """Any variant as something callable on a float32 batch: torch formats directly, ONNX through ORT, OpenVINO
    IR through OpenVINO."""
    if variant.format in ONNX_FORMATS:
        return OrtModule(onnx_path(variant))
    if variant.format in OPENVINO_FORMATS:
        return OvModule(variant)
    return load_module(variant)
