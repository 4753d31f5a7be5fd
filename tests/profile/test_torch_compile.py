"""torch-compile backends in a long-lived process: a search loads dozens of variants of one architecture (one
`forward`, so one frame for torch.compile) in one process. Each must run compiled: past dynamo's recompile limit
torch falls back to eager silently, and a search would then time eager code under a compiled backend's name."""

import torch
from torch import nn

from deploybench.profile.backends.torch_compile import TorchCompileCPU


class _Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def test_many_variants_of_one_architecture_each_run_compiled():
    from torch._dynamo.utils import counters

    x = torch.randn(2, 1, 8, 8)
    kept = TorchCompileCPU()  # stays loaded throughout, as the fp32 variant a search times against does
    kept.module = kept.wrap(_Net(16).eval())
    kept.run(x)
    for width in range(1, 13):  # more than dynamo's default recompile limit (8)
        backend = TorchCompileCPU()
        net = _Net(width).eval()
        backend.module = backend.wrap(net)
        graphs = counters["stats"]["unique_graphs"]
        out = backend.run(x)
        assert counters["stats"]["unique_graphs"] > graphs, f"width {width} ran without a compiled graph"
        torch.testing.assert_close(out, net(x))
        backend.close()
    graphs = counters["stats"]["unique_graphs"]
    kept.run(x)
    assert counters["stats"]["unique_graphs"] == graphs  # the kept one still runs its own compiled graph
