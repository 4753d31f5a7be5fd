"""Which layers a static int8 method leaves in float (`--float-layers`): by kind, and by measured sensitivity.

Kinds: `depthwise` (convolutions with one input channel per group, whose int8 kernels often run slower than
fp32 and lose the most accuracy) and `se` (the layers of squeeze-excitation blocks: pooled to 1x1, gated by a
sigmoid). `sensitive:K` keeps the K layers whose quantization alone costs the most validation top-1, measured
here: each layer is quantized on its own, with the same calibration, and evaluated on validation images (never
test images) against the fp32 parent.

A layer is a convolution or a matrix product (nn.Conv2d / nn.Linear in torch; Conv, Gemm, MatMul in ONNX). The
kinds are found from the structure, so that a user architecture needs no annotation: in torch, a depthwise
convolution has `groups == in_channels > 1`, and an SE block is a module whose children include an adaptive
average pool, a sigmoid-like gate and the convolutions or linears between them (torchvision's
`SqueezeExcitation` and the usual hand-written ones); in ONNX, a depthwise Conv has `group > 1` and one input
channel per group, and an SE layer lies on the path from a global average pool to the sigmoid that gates a Mul.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from deploybench.errors import UserError

KINDS = ("depthwise", "se")
_SENSITIVE = re.compile(r"^sensitive:(\d+)$")


@dataclass(frozen=True)
class FloatSpec:
    """A parsed `--float-layers` value: the kinds kept in float and how many of the most sensitive layers."""

    kinds: tuple[str, ...] = ()
    sensitive: int = 0

    def __str__(self) -> str:
        return ",".join([*self.kinds, *([f"sensitive:{self.sensitive}"] if self.sensitive else [])])

    def __bool__(self) -> bool:
        return bool(self.kinds or self.sensitive)


def parse(spec: str | None) -> FloatSpec:
    """`depthwise`, `se` and `sensitive:K`, comma-separated, in any order (`none` or empty: every layer int8).
    A bad word is a UserError naming the choices."""
    words = [w.strip() for w in (spec or "").split(",") if w.strip() and w.strip() != "none"]
    kinds, sensitive = set(), 0
    for word in words:
        if word in KINDS:
            kinds.add(word)
        elif m := _SENSITIVE.match(word):
            sensitive = int(m[1])
            if sensitive < 1:
                raise UserError(f"--float-layers sensitive:K needs K of 1 or more, got {word}")
        else:
            raise UserError(
                f"--float-layers: unknown {word!r}; use depthwise, se and sensitive:K, comma-separated (or none)"
            )
    return FloatSpec(tuple(k for k in KINDS if k in kinds), sensitive)


def canonical(spec: str | None) -> str:
    """The one spelling of `spec` (kinds in a fixed order, then sensitive:K; "" for none): part of variant ids."""
    return str(parse(spec))


@dataclass(frozen=True)
class Layer:
    name: str  # torch module name, or ONNX node name
    kinds: frozenset


def torch_layers(model) -> list[Layer]:
    """The nn.Conv2d and nn.Linear layers of `model`, in module order, with their kinds."""
    import torch.nn as nn

    gates = (nn.Sigmoid, nn.Hardsigmoid)
    se = set()
    for parent, module in model.named_modules():
        kids = dict(module.named_children())
        if any(isinstance(k, nn.AdaptiveAvgPool2d) for k in kids.values()) and any(
            isinstance(k, gates) for k in kids.values()
        ):
            layers = (n for n, k in kids.items() if isinstance(k, (nn.Conv2d, nn.Linear)))
            se.update(f"{parent}.{n}" if parent else n for n in layers)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        kinds = set()
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            kinds.add("depthwise")
        if name in se:
            kinds.add("se")
        out.append(Layer(name, frozenset(kinds)))
    return out


ONNX_LAYER_OPS = ("Conv", "Gemm", "MatMul")


def name_onnx_layers(model) -> bool:
    """Give every unnamed layer node of the ONNX `model` a unique name (ONNX Runtime selects nodes by name);
    True if any was named."""
    taken = {n.name for n in model.graph.node if n.name}
    named = False
    for i, node in enumerate(model.graph.node):
        if node.op_type in ONNX_LAYER_OPS and not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name, named = name, True
            taken.add(name)
    return named


def onnx_layers(model) -> list[Layer]:
    """The Conv, Gemm and MatMul nodes of the ONNX `model`, in graph order, with their kinds."""
    from onnx import numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    se = set()
    for node in graph.node:
        if node.op_type != "Mul":
            continue
        for value in node.input:
            gate = producer.get(value)
            if gate is None or gate.op_type not in ("Sigmoid", "HardSigmoid"):
                continue
            found, current = [], gate
            for _ in range(8):  # pool -> conv/gemm -> act -> conv/gemm -> gate, with reshapes or bias adds between
                source = producer.get(current.input[0]) if current.input else None
                if source is None:
                    break
                if source.op_type in ("GlobalAveragePool", "ReduceMean"):
                    se.update(found)
                    break
                if source.op_type in ONNX_LAYER_OPS:
                    found.append(source.name)
                current = source
    out = []
    for node in graph.node:
        if node.op_type not in ONNX_LAYER_OPS:
            continue
        kinds = set()
        weight = node.input[1] if len(node.input) > 1 else ""
        if (source := producer.get(weight)) is not None and source.op_type == "DequantizeLinear":
            weight = source.input[0]  # a quantized graph: the int8 weight has the float one's shape
        if node.op_type == "Conv" and weight in weights:
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            if group > 1 and numpy_helper.to_array(weights[weight]).shape[1] == 1:
                kinds.add("depthwise")
        if node.name in se:
            kinds.add("se")
        out.append(Layer(node.name, frozenset(kinds)))
    return out


def choose(
    layers: list[Layer], spec: FloatSpec, drop_alone: Callable[[str], float]
) -> tuple[list[str], dict[str, float]]:
    """The names of `layers` to keep in float, and the measured sensitivities (empty without `sensitive:K`).

    `drop_alone(name)`: the validation top-1 lost (fraction) when only layer `name` is int8. It is called for
    every layer not already kept by kind; the K largest drops are kept (the earlier layer on a tie)."""
    kept = [layer.name for layer in layers if layer.kinds & set(spec.kinds)]
    sensitivity: dict[str, float] = {}
    if spec.sensitive:
        rest = [layer.name for layer in layers if layer.name not in kept]
        if spec.sensitive >= len(rest):
            raise UserError(
                f"--float-layers sensitive:{spec.sensitive} would leave every layer in float: the model has "
                f"{len(rest)} layer(s) left to quantize; choose K below that"
            )
        sensitivity = {name: drop_alone(name) for name in rest}
        order = sorted(rest, key=lambda n: (-sensitivity[n], rest.index(n)))
        kept += order[: spec.sensitive]
    return kept, sensitivity
