"""`--float-layers`: the layers int8-pt2e and int8-ort leave in float, by kind (depthwise, squeeze-excitation)
found from the structure in torch and in ONNX, and by measured sensitivity."""

import onnx
import pytest
import torch
import torch.nn as nn
from torchvision.ops import SqueezeExcitation

from deploybench.artifacts.formats import load_module, onnx_path
from deploybench.errors import UserError
from deploybench.optimize import float_layers
from deploybench.optimize.export import export_onnx
from deploybench.optimize.quantize import QuantizeStage
from deploybench.store import Workspace


class _DepthwiseSE(nn.Module):
    """stem conv, a depthwise conv, a torchvision SE block, a pointwise conv and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se = SqueezeExcitation(8, 4)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.se(torch.relu(self.dw(torch.relu(self.stem(x)))))
        return self.fc(torch.relu(self.pw(x)).mean((2, 3)))


def test_parse_gives_one_spelling_and_refuses_bad_words():
    assert float_layers.canonical("sensitive:2, se,depthwise") == "depthwise,se,sensitive:2"
    assert float_layers.canonical("none") == float_layers.canonical(None) == ""
    for bad in ("pointwise", "sensitive:0", "sensitive:x"):
        with pytest.raises(UserError, match="float-layers"):
            float_layers.parse(bad)


def test_kinds_are_found_from_the_structure_in_torch_and_in_onnx(tmp_path):
    model = _DepthwiseSE().eval()
    kinds = {layer.name: set(layer.kinds) for layer in float_layers.torch_layers(model)}
    assert kinds == {
        "stem": set(),
        "dw": {"depthwise"},
        "se.fc1": {"se"},
        "se.fc2": {"se"},
        "pw": set(),
        "fc": set(),
    }
    path = tmp_path / "m.onnx"
    export_onnx(model, torch.randn(2, 3, 16, 16), path, opset=18)
    graph = onnx.load(str(path))
    float_layers.name_onnx_layers(graph)
    found = float_layers.onnx_layers(graph)
    assert len(found) == 6 and len({layer.name for layer in found}) == 6
    assert sorted(sorted(layer.kinds) for layer in found) == [[], [], [], ["depthwise"], ["se"], ["se"]]


def test_choose_keeps_kinds_then_the_most_sensitive_and_refuses_keeping_all():
    layers = [float_layers.Layer(n, frozenset(k)) for n, k in (("a", ()), ("b", ("depthwise",)), ("c", ()), ("d", ()))]
    drops = {"a": 0.01, "c": 0.05, "d": 0.05}
    asked = []

    def drop_alone(name):
        asked.append(name)
        return drops[name]

    kept, sensitivity = float_layers.choose(layers, float_layers.parse("depthwise,sensitive:2"), drop_alone)
    assert kept == ["b", "c", "d"] and sensitivity == drops and asked == ["a", "c", "d"]
    with pytest.raises(UserError, match="every layer in float"):
        float_layers.choose(layers, float_layers.parse("depthwise,sensitive:3"), drop_alone)


def _dequantized_inputs(graph) -> set[str]:
    return {out for node in graph.graph.node if node.op_type == "DequantizeLinear" for out in node.output}


def test_int8_ort_leaves_depthwise_convs_in_float(tmp_path, random_root, tiny_fashion_mnist):
    ws = Workspace(tmp_path / "ws")
    root = random_root(ws, "depthwise-cnn", tiny_fashion_mnist)
    plain = QuantizeStage(method="int8-ort", calib_size=32).run(ws, root, tiny_fashion_mnist)
    kept = QuantizeStage(method="int8-ort", calib_size=32, float_layers="depthwise").run(ws, root, tiny_fashion_mnist)
    assert "float_layers" not in plain.config and "val_size" not in plain.config  # ids of earlier variants kept
    assert kept.config["float_layers"] == "depthwise" and kept.id != plain.id
    for variant, depthwise_int8 in ((plain, True), (kept, False)):
        graph = onnx.load(str(onnx_path(variant)))
        dq = _dequantized_inputs(graph)
        nodes = {n.name: n for n in graph.graph.node}
        layers = [layer for layer in float_layers.onnx_layers(graph) if nodes[layer.name].op_type == "Conv"]
        assert sum("depthwise" in layer.kinds for layer in layers) >= 2
        for layer in layers:
            int8_weight = nodes[layer.name].input[1] in dq
            assert int8_weight == (depthwise_int8 or "depthwise" not in layer.kinds), layer.name
        if variant is kept:
            assert variant.metrics["float_layers"] == [x.name for x in layers if "depthwise" in x.kinds]


def _conv_weights_int8(program) -> list[bool]:
    """For each convolution of a converted PT2E program, in graph order: whether its weight is dequantized int8."""
    out = []
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target).startswith(("aten.conv2d", "aten.convolution")):
            weight = node.args[1]
            out.append(getattr(weight, "op", None) == "call_function" and "dequantize" in str(weight.target))
    return out


def test_int8_pt2e_leaves_depthwise_convs_in_float(tmp_path, random_root, tiny_fashion_mnist):
    ws = Workspace(tmp_path / "ws")
    root = random_root(ws, "depthwise-cnn", tiny_fashion_mnist)
    convs = [layer for layer in float_layers.torch_layers(load_module(root)) if layer.name not in _linears(root)]
    plain = QuantizeStage(method="int8-pt2e", calib_size=32).run(ws, root, tiny_fashion_mnist)
    kept = QuantizeStage(method="int8-pt2e", calib_size=32, float_layers="depthwise").run(ws, root, tiny_fashion_mnist)
    assert kept.metrics["float_layers"] == [layer.name for layer in convs if "depthwise" in layer.kinds]
    assert len(kept.metrics["float_layers"]) >= 2
    assert _conv_weights_int8(load_module(plain).program) == [True] * len(convs)
    assert _conv_weights_int8(load_module(kept).program) == ["depthwise" not in layer.kinds for layer in convs]


def _linears(variant) -> set[str]:
    return {name for name, m in load_module(variant).named_modules() if isinstance(m, nn.Linear)}


def test_sensitive_layers_are_measured_on_validation_and_the_worst_kept(trained_workspace):
    ws, root, data_dir = trained_workspace
    stage = QuantizeStage(method="int8-ort", calib_size=32, float_layers="sensitive:1", val_size=64)
    v = stage.run(ws, root, data_dir)
    sensitivity = v.metrics["layer_sensitivity"]
    graph = onnx.load(str(onnx_path(v)))
    assert set(sensitivity) == {layer.name for layer in float_layers.onnx_layers(graph)}
    worst = max(sensitivity, key=lambda n: (sensitivity[n], -list(sensitivity).index(n)))
    assert v.metrics["float_layers"] == [worst] and v.config["val_size"] == 64
    node = next(n for n in graph.graph.node if n.name == worst)
    assert node.input[1] not in _dequantized_inputs(graph)
    with pytest.raises(UserError, match="every layer in float"):
        QuantizeStage(method="int8-pt2e", calib_size=32, float_layers="sensitive:99").run(ws, root, data_dir)
    with pytest.raises(UserError, match="--float-layers is an option of --method int8-pt2e / int8-ort"):
        QuantizeStage(method="bf16", float_layers="depthwise")


@pytest.mark.parametrize(
    "words, message",
    [
        (["--method", "int8-ort", "--float-layers", "pointwise"], "error: --float-layers: unknown 'pointwise'"),
        (["--method", "bf16", "--float-layers", "se"], "error: quantize: --float-layers is an option of --method"),
    ],
)
def test_a_bad_float_layers_is_one_error_line_and_makes_nothing(trained_workspace, capsys, words, message):
    from deploybench.cli.optimize import main

    ws, root, data_dir = trained_workspace
    before = [v.id for v in ws.variants()]
    argv = ["quantize", "--model", "lenet", "--workspace", str(ws.root), "--data-dir", str(data_dir), *words]
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code != 0 and len(err.strip().splitlines()) == 1 and message in err, err
    assert [v.id for v in ws.variants()] == before
