"""The stages' choices, declared once and without heavy imports, so that the CLI offers exactly these (and
answers `--help` or a wrong choice without loading torch).

`QUANT_METHODS` is the one table of quantization methods: CLI name, the format of the variant it writes, the
dtype its arithmetic runs in (what the profiler's % of peak compares with), whether `optimize all` makes it,
the `QuantizeConfig` options that enter its variant's id, and whether it works on an ONNX file. The stage
(`optimize.quantize`) implements each entry; `optimize all`'s chains follow the table's order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QuantMethod:
    name: str  # `optimize quantize --method NAME`
    fmt: str  # format of the variant it writes
    compute_dtype: str  # int8 | bfloat16 | float16
    in_all: bool = True  # made by `optimize all` (where this machine can run it and it pays)
    options: tuple[str, ...] = ()  # QuantizeConfig fields it uses (only those enter the variant's config and id)
    onnx_parent: bool = False  # quantizes an ONNX file (the parent is exported first)


QUANT_METHODS: dict[str, QuantMethod] = {
    m.name: m
    for m in (
        QuantMethod(
            "int8-pt2e", "torch-export-int8", "int8", options=("calib_size", "float_layers", "val_size", "seed")
        ),
        QuantMethod(
            "int8-ort",
            "onnx-int8",
            "int8",
            options=("calib_size", "calib_method", "reduce_range", "float_layers", "val_size", "seed"),
            onnx_parent=True,
        ),
        QuantMethod("int8-nncf", "openvino-ir", "int8", options=("calib_size", "seed"), onnx_parent=True),
        # int8-nncf with accuracy control: layers go back to fp32 until top-1 on validation images drops by at most
        # `max_drop`. Not in `optimize all`: it validates repeatedly, and int8-nncf is its unconstrained form.
        QuantMethod(
            "int8-nncf-ac",
            "openvino-ir",
            "int8",
            in_all=False,
            options=("calib_size", "max_drop", "val_size", "seed"),
            onnx_parent=True,
        ),
        QuantMethod("dynamic", "torch-export", "int8"),
        QuantMethod("dynamic-pt2e", "torch-export-int8", "int8"),
        QuantMethod("bf16", "torch-bf16", "bfloat16"),
        QuantMethod("fp16", "torch-fp16", "float16"),
        # Last: `optimize all` makes it only where int8-pt2e, made before it, lost too much accuracy.
        QuantMethod("qat", "torch-export-int8", "int8", options=("qat_epochs", "qat_lr", "qat_minutes", "seed")),
    )
}
CALIB_METHODS = ("minmax", "entropy", "percentile")  # int8-ort's calibration
PRUNE_IMPORTANCES = ("magnitude", "taylor", "bn-scale", "lamp")
