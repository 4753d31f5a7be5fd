"""OpenVINO on the CPU: read an ONNX or IR variant, compile it with explicit settings, and say what precision the
compiled model really runs in.

OpenVINO picks the CPU's inference precision itself: on CPUs with native bf16 (AVX512_BF16, AMX) an fp32 model
runs its convolutions and matrix products in bf16 unless told otherwise. The precision is therefore read back from
the compiled model (`INFERENCE_PRECISION_HINT` and each layer's `runtimePrecision`), never assumed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from deploybench.artifacts.formats import ONNX_FORMATS, OPENVINO_FORMATS, UnsupportedFormat, onnx_path, openvino_ir_path
from deploybench.store import Variant

DEVICE = "CPU"
PERFORMANCE_HINT = "LATENCY"  # one stream: a batch at a time, as every other backend is timed
# Layers that carry the MACs, whose precision is the arithmetic's dtype (reorders, eltwise, constants are not).
COMPUTE_LAYERS = {
    "Convolution",
    "GroupConvolution",
    "Deconvolution",
    "FullyConnected",
    "MatMul",
    "ScaledDotProductAttention",
}
_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "i8": "int8", "u8": "int8"}


def openvino():
    """The openvino package (imported on first use: it is optional)."""
    import openvino

    return openvino


def unavailable() -> str | None:
    """Why OpenVINO cannot run here, or None."""
    try:
        core = openvino().Core()
    except ImportError as exc:
        return f"openvino is not installed ({exc})"
    if DEVICE not in core.available_devices:
        return f"OpenVINO lists no {DEVICE} device ({', '.join(core.available_devices) or 'none'})"
    return None


def model_path(variant: Variant) -> Path:
    """The file OpenVINO reads for `variant` (model.onnx or model.xml), verified against the store's digest."""
    if variant.format in ONNX_FORMATS:
        return onnx_path(variant)
    if variant.format in OPENVINO_FORMATS:
        return openvino_ir_path(variant)
    raise UnsupportedFormat(f"format {variant.format} is neither ONNX nor OpenVINO IR")


def compile_variant(variant: Variant, threads: int, precision: str | None = None):
    """`variant` compiled for the CPU with `threads` inference threads and the LATENCY hint; `precision`
    ("f32", "bf16") overrides OpenVINO's own choice of inference precision."""
    ov = openvino()
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": int(threads), "PERFORMANCE_HINT": PERFORMANCE_HINT}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    return core.compile_model(core.read_model(str(model_path(variant))), DEVICE, config)


def layer_precisions(compiled) -> dict[str, int]:
    """{runtime precision: number of compute layers running in it} of a compiled model."""
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_LAYERS:
            counts[info["runtimePrecision"].astype(str)] += 1
    return dict(sorted(counts.items()))


def runtime_facts(compiled) -> dict:
    """What a measurement row records of a compiled model: its settings as OpenVINO reports them back, and the
    precisions its layers run in. `runtime_compute_dtype` is the dtype most compute layers run in (int8 when any
    layer runs int8: the quantized layers are the ones that carry the MACs)."""
    layers = layer_precisions(compiled)
    if any(p in ("i8", "u8") for p in layers):
        dtype = "int8"
    elif layers:
        dtype = _DTYPES.get(max(layers, key=layers.get), max(layers, key=layers.get))
    else:
        dtype = None
    return dict(
        inference_precision_hint=str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()),
        inference_num_threads=int(compiled.get_property("INFERENCE_NUM_THREADS")),
        performance_hint=str(compiled.get_property("PERFORMANCE_HINT")),
        num_streams=int(compiled.get_property("NUM_STREAMS")),
        runtime_precision="+".join(layers) or None,
        runtime_layer_precisions=layers,
        runtime_compute_dtype=dtype,
        openvino_version=openvino().get_version(),
    )
