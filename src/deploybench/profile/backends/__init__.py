"""Runtimes behind one interface: torch eager, torch.compile (inductor) and ONNX Runtime, on CPU and CUDA."""

from deploybench.profile.backends.base import Backend, available_backends, backend_names, get_backend, register_backend

__all__ = ["Backend", "available_backends", "backend_names", "get_backend", "register_backend"]
