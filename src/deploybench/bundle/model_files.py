"""The model file(s) of a bundle, in the runtime's own format: ONNX as it is stored (with its external data), torch
variants as a torch.export program (`model.pt2`, which runs with torch alone), OpenVINO IR as stored."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx
import torch

from deploybench.artifacts.formats import ONNX_FORMATS, load_module, needs_trust, onnx_path, torch_formats
from deploybench.artifacts.verify import read_verified, verify_variant
from deploybench.errors import UserError
from deploybench.store import Variant

EXPORT_FORMATS = {"torch-export", "torch-export-int8"}
EAGER_WEIGHTS = {"torch-state", "torch-pruned", "torch-fp16", "torch-bf16"}  # model.pt: tensors plus layer shapes


@dataclass
class ModelFiles:
    """What `write_model` put in the bundle: the file predict.py loads, every file, the runtime and its facts."""

    model_file: str
    files: list[str]
    runtime: str  # a key of predict_py.LOADERS
    runtime_version: str
    requirements: list[str]
    opset: int | None = None
    batch: str = "dynamic"  # or "1": a program exported for one image per call
    notes: list[str] = field(default_factory=list)


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _onnx(v: Variant, out: Path) -> ModelFiles:
    src = onnx_path(v)  # checked: external data inside the folder, files as recorded
    proto = onnx.load(str(src), load_external_data=False)
    data = sorted(
        {
            e.value
            for t in proto.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data
            if e.key == "location"
        }
    )
    for name in ["model.onnx", *data]:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(v.path / name, out / name)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    ort = package_version("onnxruntime")
    return ModelFiles(
        "model.onnx",
        ["model.onnx", *data],
        "onnxruntime",
        ort,
        [f"onnxruntime>={ort.split('+')[0]}", "numpy", "Pillow"],
        opset=opset,
    )


def _export_program(module: torch.nn.Module, shape: tuple[int, int, int]):
    """(program, batch): a batch-dynamic program when torch.export can make one, else one for batch 1."""
    example = (torch.zeros(2, *shape),)
    try:
        batch = torch.export.Dim("batch", min=1, max=65536)
        return torch.export.export(module, example, dynamic_shapes=({0: batch},)), "dynamic"
    except Exception:  # a model whose code fixes the batch (reshape to a constant) exports for one image
        return torch.export.export(module, (torch.zeros(1, *shape),)), "1"


def _torch(v: Variant, out: Path, shape: tuple[int, int, int]) -> ModelFiles:
    torch_version = package_version("torch")
    requirements = [f"torch>={torch_version.split('+')[0]}", "numpy", "Pillow"]
    notes, files = [], ["model.pt2"]
    batch = "dynamic"
    if v.format in EXPORT_FORMATS:
        (out / "model.pt2").write_bytes(read_verified(v, "model.pt2", needs_seal=needs_trust(v.format)))
        if v.format.endswith("int8"):
            requirements.append(f"torchao>={package_version('torchao').split('+')[0]}")
    else:
        module = load_module(v)  # verified against the store's record
        with torch.no_grad():
            program, batch = _export_program(module, shape)
        torch.export.save(program, str(out / "model.pt2"))
    if v.format in EAGER_WEIGHTS and (v.path / "model.pt").is_file():
        (out / "weights.pt").write_bytes(read_verified(v, "model.pt"))
        files.append("weights.pt")
        notes.append(
            "weights.pt holds the weights alone (a state dict, loads with weights_only=True); building the "
            "model from it needs the architecture's code. model.pt2 needs only torch."
        )
    return ModelFiles("model.pt2", files, "torch", torch_version, requirements, batch=batch, notes=notes)


def _openvino(v: Variant, out: Path) -> ModelFiles:
    verify_variant(v)
    files = sorted(f for f in v.files if f.endswith((".xml", ".bin")))
    xml = next((f for f in files if f.endswith(".xml")), None)
    if xml is None:
        raise UserError(f"variant {v.id}: no OpenVINO .xml file among its files")
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(v.path / name, out / name)
    ov = package_version("openvino")
    return ModelFiles(xml, files, "openvino", ov, [f"openvino>={ov}", "numpy", "Pillow"])


def write_model(v: Variant, out: Path, shape: tuple[int, int, int]) -> ModelFiles:
    """Write the variant's model into the bundle folder `out`. Args: shape is one input image's (C, H, W)."""
    if v.format in ONNX_FORMATS:
        return _onnx(v, out)
    if v.format.startswith("openvino"):
        return _openvino(v, out)
    if v.format in torch_formats():
        return _torch(v, out, shape)
    raise UserError(f"variant {v.id}: format {v.format} cannot be bundled (ONNX, torch and OpenVINO IR can)")
