"""Static metrics: fvcore MACs (trust target: resnet18), parameters, model size, and ONNX variants counted
through their torch ancestor."""

import torch
import torchvision

from deploybench.models.macs import count_macs
from deploybench.profile.static import static_metrics


def test_resnet18_macs_match_the_published_1_82_g():
    counted = count_macs(torchvision.models.resnet18(num_classes=1000), (3, 224, 224))
    assert counted["macs"] == 1_819_065_856  # fvcore's exact count: the published 1.82 G
    assert counted["params"] == 11_689_512
    assert set(counted["skipped_ops"]) == {"aten::max_pool2d", "aten::add_"}
    conv1 = next(r for r in counted["by_module"] if r["module"] == "conv1")
    assert conv1 == dict(module="conv1", type="Conv2d", macs=118_013_952, params=9408)


def test_attention_is_counted():
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32, batch_first=True)
    counted = count_macs(torch.nn.Sequential(torch.nn.Flatten(2), layer), (8, 4, 4))  # 8 tokens of width 16
    assert not any("attention" in op for op in counted["skipped_ops"])
    projections = 8 * 16 * 48 + 8 * 16 * 16 + 8 * 16 * 32 * 2  # QKV, output, feed-forward
    attention = 2 * 8 * 8 * 16  # Q.K^T and A.V over 4 heads of width 4
    assert counted["macs"] - projections - attention == 8 * 16 * 5 * 2  # the rest: two affine LayerNorms


def test_lenet_static_metrics_and_onnx_child_counted_through_its_parent(onnx_workspace):
    ws, trained, onnx_variant, _ = onnx_workspace
    s = static_metrics(ws, trained)
    # LeNet-5 on 1x28x28 (padded to 32): conv1 6*28*28*25, conv2 16*10*10*150, fc 400*120 + 120*84 + 84*10
    assert s["macs"] == 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert s["flops"] == 2 * s["macs"] and s["params"] == 61_706
    assert s["size_bytes"] == (trained.path / "model.pt").stat().st_size < trained.size_bytes  # plots not counted
    o = static_metrics(ws, onnx_variant)
    assert (o["macs"], o["params"], o["macs_source"]) == (s["macs"], s["params"], trained.id)
    assert o["size_bytes"] == (onnx_variant.path / "model.onnx").stat().st_size
