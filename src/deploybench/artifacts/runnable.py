"""Any variant as a callable on a float32 batch: torch formats through their loader, ONNX through ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn as nn

from deploybench.artifacts.formats import ONNX_FORMATS, load_module, onnx_path
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


def runnable(variant: Variant) -> nn.Module:
    """Any variant as something callable on a float32 batch: torch formats directly, ONNX through ORT."""
    if variant.format in ONNX_FORMATS:
        return OrtModule(onnx_path(variant))
    return load_module(variant)
