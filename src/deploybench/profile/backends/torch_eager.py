"""`torch-cpu` and `torch-cuda`: the variant's torch module run eagerly under `torch.inference_mode`."""

from __future__ import annotations

import torch

from deploybench.artifacts import formats
from deploybench.profile.backends.base import Backend, register_backend
from deploybench.store import Variant


def module_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype the module computes in (fp16/bf16 variants want inputs of that dtype)."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


class TorchBackend(Backend):
    """Shared by eager and compiled torch: load via `formats.load_module`, move to the device, cast inputs."""

    def __init__(self):
        self.module = None
        self.dtype = torch.float32

    @classmethod
    def supports(cls, variant: Variant) -> tuple[bool, str]:
        if variant.format not in formats.torch_formats():
            return False, f"format {variant.format} has no torch loader"
        return True, ""

    @classmethod
    def preload(cls) -> None:
        # Imported before timing starts, so that no measured call pays for them.
        import torchao.quantization.pt2e  # noqa: F401  (the ops int8 programs call)

        import deploybench.models.zoo  # noqa: F401

    def load(self, variant: Variant, batch_size: int, threads: int) -> None:
        torch.set_num_threads(threads)
        module = formats.load_module(variant, self.device)
        self.expect_inputs_of(variant)
        self.dtype = module_dtype(module)
        self.module = self.wrap(module)
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def wrap(self, module):
        return module

    def prepare(self, batch: torch.Tensor):
        self.check_input(batch)
        return batch.to(self.device, self.dtype).contiguous()

    def run(self, inputs):
        with torch.inference_mode():
            return self.module(inputs)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def peak_memory_bytes(self) -> int | None:
        return int(torch.cuda.max_memory_allocated()) if self.device == "cuda" else None

    def close(self) -> None:
        self.module = None
        if self.device == "cuda":
            torch.cuda.empty_cache()


@register_backend
class TorchCPU(TorchBackend):
    name, device = "torch-cpu", "cpu"


@register_backend
class TorchCUDA(TorchBackend):
    name, device = "torch-cuda", "cuda"
