"""PT2E int8 on architectures whose modules are called more than once per forward (torchvision's ResNets)."""
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
    quantized_convs = sum(1 for n in converted.graph.nodes if n.target is torch.ops.aten.conv2d.default
                          and "dequantize" in str(n.args[0].target))
    assert quantized_convs == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())  # every conv is int8
    ref, out = model(x), converted(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
    torch.testing.assert_close(out, ref, rtol=0, atol=0.1 * ref.abs().max().item())
