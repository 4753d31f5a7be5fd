"""PT2E int8: architectures whose modules are called more than once per forward (torchvision's ResNets), and
the compiled int8 kernels a profiling process really runs."""

import subprocess
import sys

import pytest
import torch
from torchvision.models.resnet import BasicBlock, ResNet

from deploybench.optimize.quantize import _export_for_pt2e, _one_partition_per_call, _x86_quantizer


def _tiny_resnet():
    torch.manual_seed(0)
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10).eval()  # each block calls its one `relu` twice


def test_x86_quantizer_alone_refuses_a_module_called_twice():
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    x = torch.randn(2, 3, 32, 32)
    graph = torch.export.export(_tiny_resnet(), (x,)).module()
    with pytest.raises(ValueError, match="more than one output node"):  # the upstream limit we work around
        prepare_pt2e(graph, _x86_quantizer())


def test_each_call_gets_its_own_partition_and_the_resnet_quantizes():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, x = _tiny_resnet(), torch.randn(8, 3, 32, 32)
    graph = _export_for_pt2e(model, x)
    assert _one_partition_per_call(graph) == 0  # already split: a second pass finds nothing to relabel
    prepared = prepare_pt2e(graph, _x86_quantizer())
    prepared(x)
    converted = convert_pt2e(prepared)
    quantized_convs = sum(
        1
        for n in converted.graph.nodes
        if n.target is torch.ops.aten.conv2d.default and "dequantize" in str(n.args[0].target)
    )
    assert quantized_convs == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())  # every conv is int8
    ref, out = model(x), converted(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
    torch.testing.assert_close(out, ref, rtol=0, atol=0.1 * ref.abs().max().item())


# A fresh interpreter, like the child `profile run` measures in: load the int8 variant through the
# torch-compile-cpu backend, run it once, and print which kernels inductor generated.
_COMPILED_KERNELS = """
import sys, torch
from torch._inductor.utils import run_and_get_code
from deploybench.profile.backends import get_backend
from deploybench.store import Workspace
variant = Workspace(sys.argv[1], create=False).get_variant(sys.argv[2])
backend = get_backend("torch-compile-cpu")()
backend.load(variant, 4, 1)
_, code = run_and_get_code(backend.run, backend.prepare(torch.randn(4, 1, 28, 28)))
code = "".join(code)
print("qconv" if "onednn.qconv" in code else "-", "qlinear" if "onednn.qlinear" in code else "-",
      "fp32-conv" if "convolution" in code else "-")
"""


@pytest.mark.parametrize(
    "method, kernels",
    [
        ("int8-pt2e", ["qconv", "qlinear", "-"]),  # static: every conv and linear in int8
        ("dynamic-pt2e", ["-", "qlinear", "fp32-conv"]),  # dynamic: the linears only, as torchao's `dynamic`
    ],
)
def test_a_profiling_process_compiles_int8_programs_to_onednn_int8_kernels(
    tmp_path, tiny_fashion_mnist, random_root, method, kernels
):
    # Without torchao's x86 inductor passes (registered by importing its quantizer, which a process that
    # only loads the program never does), every int8 layer compiles to dequantize -> fp32 conv -> quantize.
    from deploybench.optimize.quantize import QuantizeStage
    from deploybench.store import Workspace

    ws = Workspace(tmp_path / "ws")
    int8 = QuantizeStage(method=method).run(ws, random_root(ws, "simple-cnn", tiny_fashion_mnist), tiny_fashion_mnist)
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILED_KERNELS, str(ws.root), int8.id], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == kernels


def test_an_exported_program_is_loaded_onto_the_device_with_the_devices_in_its_graph(
    tmp_path, tiny_fashion_mnist, random_root
):
    # torch.export writes each input's device into the graph (aten._assert_tensor_metadata(..., device=cpu)).
    # `.to('cuda')` on the program's module moves the weights only, and torchao's dynamic int8 program then
    # fails on torch-cuda with "Tensor device mismatch! Expected: cpu, Got: cuda:0".
    # `meta` stands in for the GPU here: the graph and the weights must both be on it.
    from deploybench.artifacts.formats import load_module
    from deploybench.optimize.quantize import QuantizeStage
    from deploybench.store import Workspace

    ws = Workspace(tmp_path / "ws")
    dynamic = QuantizeStage(method="dynamic").run(
        ws, random_root(ws, "simple-cnn", tiny_fashion_mnist), tiny_fashion_mnist
    )
    module = load_module(dynamic, "meta")
    graph_devices = {str(n.kwargs["device"]) for n in module.program.graph.nodes if "device" in n.kwargs}
    assert graph_devices == {"meta"}
    assert {t.device.type for t in [*module.parameters(), *module.buffers()]} == {"meta"}
    assert module(torch.randn(2, 1, 28, 28, device="meta")).shape == (2, 10)
    on_cpu = load_module(dynamic)
    assert {str(n.kwargs["device"]) for n in on_cpu.program.graph.nodes if "device" in n.kwargs} == {"cpu"}


def test_a_program_asserts_the_indexed_device_its_inputs_arrive_on(monkeypatch):
    # Moved to plain "cuda", a program asserts device=cuda; eager torch accepts an input on cuda:0, but
    # torch.compile's fake tensors compare exactly, so torch-compile-cuda would fail on every exported program.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from deploybench.artifacts.formats import indexed_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert indexed_device("cuda") == torch.device("cuda", 0)
    assert indexed_device("cuda:1") == torch.device("cuda", 1)
    assert indexed_device("meta") == torch.device("meta")
    with FakeTensorMode():
        x = torch.empty(2, 3, device="cuda:0")
        torch.ops.aten._assert_tensor_metadata(x, dtype=torch.float32, device=indexed_device("cuda"))
        with pytest.raises(AssertionError, match="Tensor device mismatch"):
            torch.ops.aten._assert_tensor_metadata(x, dtype=torch.float32, device=torch.device("cuda"))
