"""`export`: a PyTorch variant to ONNX with a dynamic batch axis, checked, ORT-optimized, parity-tested.

The dynamo exporter writes the weights to `model.onnx.data` next to the graph; the TorchScript exporter is
the fallback (with a warning) for models dynamo cannot export. The saved graph has ONNX Runtime's *basic*
optimizations applied (constant folding, Conv+BN fusion, redundant-node removal): standard ONNX ops only, so
it stays portable and quantizable; runtimes apply the hardware-specific levels when they open it.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from deploybench.artifacts.formats import ONNX_FORMATS, load_module
from deploybench.errors import UserError
from deploybench.optimize.base import (
    Stage,
    StageConfig,
    register_stage,
    require_torch_parent,
    stage_data,
)
from deploybench.store import Variant, Workspace

MIN_AGREEMENT = 0.995  # top-1 agreement with the PyTorch parent below which an export is refused


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    opset: int = 18


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> str:
    """Write `path` (+ external data); returns which exporter succeeded."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=opset,
                external_data=True,
                dynamic_shapes=({0: batch},),
                input_names=["input"],
                output_names=["logits"],
                verbose=False,
            )
        program.save(str(path), external_data=True)
        return "dynamo"
    except Exception as exc:  # noqa: BLE001  the dynamo exporter raises many kinds of error
        warnings.warn(
            f"dynamo ONNX export failed ({str(exc).splitlines()[0][:200]}); falling back to the TorchScript exporter",
            stacklevel=2,
        )
        for f in path.parent.glob(path.name + "*"):
            f.unlink()
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
        return "torchscript"


def _ort_optimize(src: Path, dst: Path) -> None:
    """Save `src` with ORT's basic graph optimizations to `dst`, weights external in `dst.name + '.data'`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])


@register_stage
class ExportStage(Stage):
    """ONNX export of a PyTorch (trained or pruned) variant."""

    name = "export"
    Config = ExportConfig

    def __init__(self, config: ExportConfig | None = None, **options):
        super().__init__(config, **options)
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if not 7 <= self.config.opset <= newest:
            raise UserError(f"--opset must be between 7 and {newest} (this onnx's newest), got {self.config.opset}")

    def run(self, ws: Workspace, parent: Variant, data_dir) -> Variant:
        import onnx

        require_torch_parent(parent, "export")
        data = stage_data(ws, parent, data_dir)
        opset = self.config.opset

        def write(d: Path) -> dict:  # runs only when the export is not in the store yet
            model = load_module(parent)
            with tempfile.TemporaryDirectory() as raw_dir:
                raw = Path(raw_dir) / "raw.onnx"
                exporter = export_onnx(model, data.example(2), raw, opset)
                onnx.checker.check_model(str(raw), full_check=True)
                # The dynamo exporter builds at its own opset and converts; a conversion that fails keeps its own.
                written = next(
                    i.version
                    for i in onnx.load(str(raw), load_external_data=False).opset_import
                    if i.domain in ("", "ai.onnx")
                )
                if written != opset:
                    raise UserError(
                        f"asked for ONNX opset {opset}, the {exporter} exporter wrote opset {written}; "
                        f"refusing it (its config would name the wrong opset)"
                    )
                _ort_optimize(raw, d / "model.onnx")
            onnx.checker.check_model(str(d / "model.onnx"), full_check=True)
            return dict(exporter=exporter, opset=opset, ort_optimization_level="basic")

        def parity(agree: float, err: float) -> dict:
            if agree < MIN_AGREEMENT:
                raise UserError(
                    f"ONNX export of {parent.id} disagrees with PyTorch on {100 * (1 - agree):.2f}% "
                    f"of test images (max logit error {err:.3g}); refusing it"
                )
            return dict(parity_agreement_top1=agree, parity_max_abs_logit_error=err)

        return self.make_variant(ws, parent, data_dir, fmt="onnx", write=write, accept=parity)


def ensure_onnx(ws: Workspace, variant: Variant, data_dir, opset: int = 18) -> Variant:
    """`variant` itself when it is ONNX, else its export (made or found)."""
    if variant.format in ONNX_FORMATS:
        return variant
    return ExportStage(opset=opset).run(ws, variant, data_dir)
