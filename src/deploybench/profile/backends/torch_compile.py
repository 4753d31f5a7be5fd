"""`torch-compile-cpu` and `torch-compile-cuda`: inductor with `freezing=True` (weights folded as constants,
which is what makes pt2e int8 programs fast) and static shapes (one compile per batch size; the accuracy
pass pads its last batch, so nothing recompiles).

Every variant of one architecture runs the same `forward`, which dynamo compiles once per variant; past its
recompile limit (8 by default) torch would run the rest eagerly without a word, and a search, which loads dozens
of variants in one process, would time eager code under a compiled backend's name. The first call raises the
limit and makes reaching it an error.
"""

from __future__ import annotations

import torch

from deploybench.profile.backends.base import register_backend
from deploybench.profile.backends.torch_eager import TorchBackend

# Compiled variants one process may hold per frame (a search's trials and its `optimize all` comparison).
RECOMPILE_LIMIT = 1024


class CompiledBackend(TorchBackend):
    def __init__(self):
        super().__init__()
        self._compiled = False

    @classmethod
    def preload(cls) -> None:
        super().preload()
        import torch._inductor.compile_fx  # noqa: F401

    def wrap(self, module):
        self._compiled = False
        return torch.compile(module, dynamic=False)

    def run(self, inputs):
        if not self._compiled:
            # Compilation happens on the first call; only that call needs the freezing patch (entering the
            # patch has a cost of its own, which every timed call would otherwise include).
            with (
                torch._inductor.config.patch(freezing=True),
                torch._dynamo.config.patch(
                    recompile_limit=RECOMPILE_LIMIT,
                    accumulated_recompile_limit=RECOMPILE_LIMIT,
                    fail_on_recompile_limit_hit=True,
                ),
                torch.no_grad(),
            ):
                out = self.module(inputs)
            self._compiled = True
            return out
        with torch.no_grad():
            return self.module(inputs)


@register_backend
class TorchCompileCPU(CompiledBackend):
    name, device = "torch-compile-cpu", "cpu"


@register_backend
class TorchCompileCUDA(CompiledBackend):
    name, device = "torch-compile-cuda", "cuda"
