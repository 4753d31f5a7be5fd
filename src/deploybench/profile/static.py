"""Static metrics of a variant: parameters, MACs (`models.macs.count_macs`), size on disk, a per-layer table.

Variants that are not plain torch modules (ONNX files, quantized programs) take their parameters and MACs
from the nearest plain fp32 module (`torch-state`, `torch-pruned`), itself or an ancestor, when no
shape-changing stage (prune) lies in between: quantizing or exporting changes the arithmetic's precision, not
its count. Otherwise they are counted on the variant itself when it loads as a torch module, or recorded as
None with the reason.
"""

from __future__ import annotations

from deploybench.artifacts import formats
from deploybench.models.macs import count_macs
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
    out = dict(
        size_bytes=model_size_bytes(variant),
        files_bytes=variant.size_bytes,
        params=None,
        macs=None,
        flops=None,
        by_module=[],
        skipped_ops={},
        macs_source=None,
    )
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
