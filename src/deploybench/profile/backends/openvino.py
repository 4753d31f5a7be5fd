"""`openvino-cpu`: OpenVINO on the CPU, on ONNX variants and OpenVINO IR variants.

Threads (`INFERENCE_NUM_THREADS`) and the performance hint (LATENCY: one stream) are set explicitly; the row
records them as the compiled model reports them back, with the precision its layers really run in (bf16 on
CPUs with native bf16, where OpenVINO lowers fp32 by default: `runtime_precision`, `runtime_compute_dtype`).
"""

from __future__ import annotations

import numpy as np
import torch

from deploybench.artifacts import formats, openvino_runtime
from deploybench.profile.backends.base import Backend, BackendSkip, register_backend
from deploybench.store import Variant

RUNS = formats.ONNX_FORMATS | formats.OPENVINO_FORMATS


@register_backend
class OpenVinoCPU(Backend):
    name, device = "openvino-cpu", "cpu"

    def __init__(self):
        self.compiled = None
        self.request = None
        self.facts: dict = {}

    @classmethod
    def available(cls) -> tuple[bool, str]:
        why = openvino_runtime.unavailable()
        return (False, why) if why else (True, "")

    @classmethod
    def supports(cls, variant: Variant) -> tuple[bool, str]:
        if variant.format not in RUNS:
            return False, f"format {variant.format} is neither ONNX nor OpenVINO IR"
        return True, ""

    @classmethod
    def preload(cls) -> None:
        openvino_runtime.openvino()

    def load(self, variant: Variant, batch_size: int, threads: int) -> None:
        self.compiled = openvino_runtime.compile_variant(variant, threads)
        batch = self.compiled.inputs[0].get_partial_shape()[0]
        if batch.is_static and batch.get_length() != batch_size:
            raise BackendSkip(f"the model has a fixed batch size of {batch.get_length()}")
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.outputs[0]
        self.facts = openvino_runtime.runtime_facts(self.compiled)
        self.expect_inputs_of(variant)
        torch.set_num_threads(threads)  # the data pipeline around it

    def run_facts(self) -> dict:
        """Settings and precision of the compiled model (recorded in the row's metrics)."""
        return dict(self.facts)

    def prepare(self, batch: torch.Tensor):
        self.check_input(batch)
        return np.ascontiguousarray(batch.numpy(), dtype=np.float32)

    def run(self, inputs):
        # Shared buffers: no copy of the input or the result on each timed call; `logits` copies the result.
        return self.request.infer([inputs], share_inputs=True, share_outputs=True)[self.output]

    def logits(self, output) -> torch.Tensor:
        return torch.from_numpy(np.array(output, dtype=np.float32))

    def close(self) -> None:
        self.request = self.compiled = None
