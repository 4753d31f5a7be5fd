"""The backend interface and registry: a backend loads a variant, runs a batch and synchronizes.

The profiler knows nothing of runtimes beyond this interface. A backend answers `available()` (is the
runtime/device here?) and `supports(variant)` (can it run this format?) with a reason, so a combination it
cannot run becomes a recorded skip, never an error.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import torch

from deploybench.errors import check_input_shape, unknown_choice
from deploybench.store import Variant

_BACKENDS: dict[str, type["Backend"]] = {}


class BackendSkip(Exception):
    """This backend cannot run this variant here (fallback provider, fixed batch size, ...): a recorded skip."""


class Backend(ABC):
    """One runtime on one device. Lifecycle: `load(variant, batch_size, threads)`, then `prepare` an input
    once and call `run` on it repeatedly; `synchronize` waits for queued device work; `close` frees it."""

    name: str = ""
    device: str = "cpu"  # "cpu" or "cuda"
    input_chw: tuple[int, int, int] | None = None  # set by `expect_inputs_of` in `load`

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") when the runtime and device are present, else (False, why not). Torch backends need
        only their device; runtimes with providers of their own override this."""
        return cuda_available() if cls.device == "cuda" else (True, "")

    @classmethod
    @abstractmethod
    def supports(cls, variant: Variant) -> tuple[bool, str]:
        """(True, "") when this backend can run the variant's format, else (False, why not)."""

    @classmethod
    def preload(cls) -> None:
        """Import the runtime's libraries ahead of `load`, so memory measured from `load` on is the model's and
        its buffers', not the one-time cost of importing code."""

    @abstractmethod
    def load(self, variant: Variant, batch_size: int, threads: int) -> None:
        """Load the variant for batches of `batch_size`, using `threads` CPU threads.
        May raise `UnsupportedFormat` (recorded as a skip)."""

    def prepare(self, batch: torch.Tensor):
        """Turn a CPU float32 batch into this backend's input (on its device, in its dtype). Implementations
        start with `self.check_input(batch)`."""
        self.check_input(batch)
        return batch

    def expect_inputs_of(self, variant: Variant) -> None:
        """Remember the (C, H, W) the variant's model was built for (every variant's config records it)."""
        if "in_channels" in variant.config and "image_size" in variant.config:
            size = int(variant.config["image_size"])
            self.input_chw = (int(variant.config["in_channels"]), size, size)

    def check_input(self, batch: torch.Tensor) -> None:
        """A clear "expected ... got ..." error for a batch of the wrong shape or channel count."""
        if self.input_chw is not None:
            check_input_shape(batch.shape, self.input_chw, f"{self.name}")

    @abstractmethod
    def run(self, inputs):
        """Run one prepared batch; returns the backend's raw output (possibly still in flight on a device)."""

    def logits(self, output) -> torch.Tensor:
        """A raw output of `run` as a float32 CPU tensor of shape (batch, classes)."""
        return output.detach().float().cpu()

    def synchronize(self) -> None:
        """Wait for all queued work (no-op on CPU)."""

    def run_facts(self) -> dict:
        """What the runtime chose for the loaded model and a row should record (settings it reports back, the
        precision it really computes in as `runtime_compute_dtype`); {} when it chooses nothing of its own."""
        return {}

    def peak_memory_bytes(self) -> int | None:
        """Device peak memory since load, when the device tracks it (GPU); None on CPU (RSS is used)."""
        return None

    def close(self) -> None:
        """Drop the loaded model."""


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator adding a backend to the registry under `cls.name`."""
    if cls.name in _BACKENDS:
        raise ValueError(f"backend {cls.name!r} registered twice")
    _BACKENDS[cls.name] = cls
    return cls


_MODULES = ("torch_eager", "torch_compile", "onnxruntime", "openvino")  # in the listing's order


def _ensure_loaded() -> None:
    # Importing a backend module registers it; done on first use because each one imports this base.
    for name in _MODULES:
        importlib.import_module(f"deploybench.profile.backends.{name}")


def backend_names() -> list[str]:
    """Every registered backend, in registry order (eager, compile, ONNX Runtime, OpenVINO; CPU before CUDA)."""
    _ensure_loaded()
    # By module, in _MODULES's order, then as each module registers them: whichever module a caller imported
    # first, the listing (and every table and report ordered by it) is the same.
    order = {f"deploybench.profile.backends.{m}": i for i, m in enumerate(_MODULES)}
    return sorted(_BACKENDS, key=lambda n: order.get(_BACKENDS[n].__module__, len(order)))


def get_backend(name: str) -> type[Backend]:
    _ensure_loaded()
    if name not in _BACKENDS:
        raise unknown_choice("backend", name, _BACKENDS)
    return _BACKENDS[name]


def available_backends() -> list[str]:
    """Names of the backends whose runtime and device are present here."""
    return [n for n in backend_names() if _BACKENDS[n].available()[0]]


def cuda_available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device (torch.cuda.is_available() is False)"
    return True, ""
