"""Static metrics of a variant: parameters, MACs (fvcore), size on disk, and a per-layer table.

fvcore counts one multiply-add as one "flop"; we label its count MACs and report FLOPs = 2 x MACs. fvcore
skips ops it has no formula for (element-wise ops, pooling, and attention); we add handles for
`scaled_dot_product_attention` (Q.K^T and A.V) and `nn.MultiheadAttention`'s fused inference path, and record
the names of the ops still skipped.

Variants that are not plain torch modules (ONNX files, quantized programs) take their parameters and MACs
from the nearest plain fp32 module (`torch-state`, `torch-pruned`), itself or an ancestor, when no shape-changing stage (prune) lies in between: quantizing or
exporting changes the arithmetic's precision, not its count. Otherwise they are counted on the variant
itself when it loads as a torch module, or recorded as None with the reason.
"""
from __future__ import annotations

import math
import warnings

import torch

from deploybench.optimize import formats
from deploybench.store import Variant, Workspace

# Files that are a variant's record, not its model (plots, logs, metadata): not counted in `size_bytes`.
_NOT_MODEL_SUFFIXES = (".png", ".svg", ".pdf", ".json", ".txt", ".md", ".html", ".csv", ".log", ".yaml")
SHAPE_CHANGING_STAGES = ("prune",)
COUNTABLE_FORMATS = ("torch-state", "torch-pruned")  # plain fp32 modules fvcore traces as built


def root_config(ws: Workspace, variant: Variant) -> dict:
    """The trained root's config (arch, num_classes, in_channels, image_size, mean, std, dataset),
    overridden by anything the variant's own stages recorded."""
    chain = ws.lineage(variant)
    config: dict = {}
    for v in chain:
        config.update({k: val for k, val in v.config.items() if not k.startswith("_")})
    return config


def input_shape(config: dict) -> tuple[int, int, int]:
    """(channels, height, width) of one input image."""
    return int(config["in_channels"]), int(config["image_size"]), int(config["image_size"])


def model_size_bytes(variant: Variant) -> int:
    """Bytes of the files that make up the model (weights, programs, ONNX + external data), without the
    plots, logs and JSON records that live next to it."""
    total = 0
    for name in variant.files:
        if name.startswith("tensorboard/") or name.lower().endswith(_NOT_MODEL_SUFFIXES):
            continue
        path = variant.path / name
        if path.is_file():
            total += path.stat().st_size
    return total


def _sdpa_macs(inputs, outputs) -> int:
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * q[-1] + batch * q[-2] * k[-2] * v[-1]  # Q.K^T + A.V


def _native_mha_macs(inputs, outputs) -> int:
    """nn.MultiheadAttention's inference fast path: Q/K/V projections, attention, output projection."""
    from fvcore.nn.jit_handles import get_shape

    q, k = get_shape(inputs[0]), get_shape(inputs[1])
    batch, length, embed = math.prod(q[:-2]), q[-2], q[-1]
    source = k[-2]
    return batch * embed * embed * (length + 2 * source) + 2 * batch * length * source * embed \
        + batch * length * embed * embed


def count_macs(module: torch.nn.Module, shape: tuple[int, ...], batch_size: int = 1) -> dict:
    """fvcore MAC count of `module` on a zero batch of `shape`: total, per leaf module (with parameters),
    and the ops fvcore skipped (name -> occurrences)."""
    with warnings.catch_warnings():  # fvcore scripts a helper at import time, which torch deprecates
        warnings.simplefilter("ignore")
        from fvcore.nn import FlopCountAnalysis, parameter_count

    module = module.eval()
    x = torch.zeros(batch_size, *shape)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            x = x.to(t.dtype)
            break
    analysis = FlopCountAnalysis(module, (x,)).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs,
                           "aten::_native_multi_head_attention", _native_mha_macs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = int(analysis.total())
        by_module = analysis.by_module()
        skipped = dict(analysis.unsupported_ops())
    params = parameter_count(module)
    leaves = {name for name, m in module.named_modules() if name and not any(True for _ in m.children())}
    types = {name: type(m).__name__ for name, m in module.named_modules()}
    table = [dict(module=name, type=types.get(name, ""), macs=int(by_module.get(name, 0)),
                  params=int(params.get(name, 0)))
             for name in by_module if name in leaves and (by_module.get(name) or params.get(name))]
    return dict(macs=total, params=int(sum(p.numel() for p in module.parameters())), by_module=table,
                skipped_ops=skipped)


def _counting_source(ws: Workspace, variant: Variant) -> Variant:
    """The variant whose torch module stands for `variant`'s arithmetic (see the module docstring)."""
    for v in reversed(ws.lineage(variant)):
        if v.format in COUNTABLE_FORMATS:
            return v
        if v.stage.startswith(SHAPE_CHANGING_STAGES):
            break
    return variant


def static_metrics(ws: Workspace, variant: Variant) -> dict:
    """params, macs, flops, size_bytes, files_bytes, by_module, skipped_ops, macs_source (the variant id
    counted) and, when MACs could not be counted, macs_unavailable (why)."""
    out = dict(size_bytes=model_size_bytes(variant), files_bytes=variant.size_bytes, params=None, macs=None,
               flops=None, by_module=[], skipped_ops={}, macs_source=None)
    source = _counting_source(ws, variant)
    try:
        module = formats.load_module(source)
        counted = count_macs(module, input_shape(root_config(ws, variant)))
    except formats.UnsupportedFormat as exc:
        out["macs_unavailable"] = f"no torch module to count ({exc}) and no shape-preserving torch ancestor"
        return out
    except Exception as exc:  # fvcore's tracer fails on some programs: record why, keep profiling
        out["macs_unavailable"] = f"fvcore could not trace {source.id}: {type(exc).__name__}: {exc}"[:500]
        return out
    out.update(counted, flops=2 * counted["macs"], macs_source=source.id)
    return out
