"""The one MAC counter (fvcore, with handles for attention): every stage and the profiler count with it.

fvcore counts one multiply-add as one "flop"; we call its count MACs and report FLOPs = 2 x MACs. fvcore skips
ops it has no formula for (element-wise ops, pooling, attention); `scaled_dot_product_attention` (Q.K^T and
A.V) and `nn.MultiheadAttention`'s fused inference path get handles here, and the ops still skipped are named
in the result.
"""

from __future__ import annotations

import math
import warnings

import torch


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
    return (
        batch * embed * embed * (length + 2 * source)
        + 2 * batch * length * source * embed
        + batch * length * embed * embed
    )


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
    analysis.set_op_handle(
        "aten::scaled_dot_product_attention", _sdpa_macs, "aten::_native_multi_head_attention", _native_mha_macs
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = int(analysis.total())
        by_module = analysis.by_module()
        skipped = dict(analysis.unsupported_ops())
    params = parameter_count(module)
    leaves = {name for name, m in module.named_modules() if name and not any(True for _ in m.children())}
    types = {name: type(m).__name__ for name, m in module.named_modules()}
    table = [
        dict(module=name, type=types.get(name, ""), macs=int(by_module.get(name, 0)), params=int(params.get(name, 0)))
        for name in by_module
        if name in leaves and (by_module.get(name) or params.get(name))
    ]
    return dict(
        macs=total, params=int(sum(p.numel() for p in module.parameters())), by_module=table, skipped_ops=skipped
    )
