"""Variant formats: how each kind of artifact reloads in a fresh process, without unpickling code.

A format registers a loader that returns a runnable `torch.nn.Module` (torch formats) or nothing for
formats that only non-torch runtimes run (ONNX, OpenVINO IR). Backends ask `load_module` / `onnx_path` /
`openvino_ir_path` and skip a variant whose format they cannot run. All check the variant first
(`verify.verify_variant`): its files must be those the store recorded, and a format whose loader could run code
from a hostile file (`needs_trust`) loads only what this account made, unless the user passed `--trust-artifacts`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import onnx
import torch
import torch.nn as nn
from google.protobuf.message import DecodeError

from deploybench.artifacts.checkpoint import extract_state_dict, load_checkpoint, load_weights
from deploybench.artifacts.exported import load_program
from deploybench.artifacts.verify import read_verified, verify_variant
from deploybench.errors import UserError
from deploybench.models.identity import build_model
from deploybench.store import Variant

_TORCH_LOADERS: dict[str, Callable[[Variant, str], nn.Module]] = {}
# formats whose loader runs a deserializer that can execute code from a hostile file (torch.export's)
_NEEDS_TRUST: set[str] = set()
ONNX_FORMATS = {"onnx", "onnx-int8"}
OPENVINO_FORMATS = {"openvino-ir"}  # model.xml + model.bin, read by OpenVINO
# fp32 eager modules: the formats whose params and MACs can be counted directly and that can be exported/pruned.
EAGER_FORMATS = {"torch-state", "torch-pruned"}
HALF_FORMATS = {"torch-bf16", "torch-fp16"}  # fp16/bf16 weights, run on float32 inputs (`CastInput`)


class UnsupportedFormat(Exception):
    """This runtime cannot run a variant of this format (a recorded skip, not an error)."""


def register_format(name: str, *, needs_trust: bool = False):
    """Decorator registering `loader(variant, device) -> nn.Module` for format `name`. A loader needs `device`
    only when moving its module there takes more than `.to(device)`, which `load_module` applies to all.
    `needs_trust`: the loader's deserializer could run code from a hostile file, so a variant another account
    made is refused unless trusted (`verify.verify_variant`)."""

    def wrap(loader):
        _TORCH_LOADERS[name] = loader
        if needs_trust:
            _NEEDS_TRUST.add(name)
        return loader

    return wrap


def torch_formats() -> set[str]:
    return set(_TORCH_LOADERS)


def needs_trust(fmt: str) -> bool:
    """Whether loading format `fmt` from a hostile file could run code (see `register_format`)."""
    return fmt in _NEEDS_TRUST


def load_module(variant: Variant, device: str = "cpu") -> nn.Module:
    """The variant as a torch module in eval mode on `device`, once `verify_variant` has passed it."""
    if variant.format not in _TORCH_LOADERS:
        raise UnsupportedFormat(f"format {variant.format} has no torch loader")
    verify_variant(variant, needs_seal=needs_trust(variant.format))
    return _TORCH_LOADERS[variant.format](variant, device).to(device).eval()


def onnx_path(variant: Variant) -> Path:
    """The variant's model.onnx, checked by `check_onnx` and `verify_variant` before any runtime opens it.
    `check_onnx` goes first: it reads nothing outside the folder, and its error says what is wrong with the file."""
    if variant.format not in ONNX_FORMATS:
        raise UnsupportedFormat(f"format {variant.format} is not ONNX")
    path = variant.path / "model.onnx"
    if not path.is_file():
        raise UserError(f"variant {variant.id}: {path} is missing")
    check_onnx(path)
    verify_variant(variant, needs_seal=False)  # ONNX Runtime parses protobuf: no code from the file runs
    return path


def openvino_ir_path(variant: Variant) -> Path:
    """The variant's model.xml (its weights in model.bin beside it), checked by `verify_variant` before OpenVINO
    opens it. OpenVINO parses XML and raw weights: no code from the files runs (no extensions are loaded)."""
    if variant.format not in OPENVINO_FORMATS:
        raise UnsupportedFormat(f"format {variant.format} is not OpenVINO IR")
    for name in ("model.xml", "model.bin"):
        if not (variant.path / name).is_file():
            raise UserError(f"variant {variant.id}: {variant.path / name} is missing")
    verify_variant(variant, needs_seal=False)
    return variant.path / "model.xml"


def _tensors(graph):
    """Every TensorProto of `graph`: initializers, and tensors in node attributes and their subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def check_onnx(path: Path) -> None:
    """Refuse a malformed ONNX file, or one whose external data lies outside its folder (`../`, an absolute
    path, a symlink), before anything outside the folder is opened; then run `onnx.checker` on it.

    Only the protobuf itself is parsed first (`load_external_data=False`), and locations are judged from their
    text and `lstat`/`realpath`, which never open the target."""

    folder = path.parent.resolve()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a valid ONNX model: {why}") from None
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = folder / location
        if (
            not location
            or Path(location).is_absolute()
            or ".." in Path(location).parts
            or where.is_symlink()
            or not where.resolve().is_relative_to(folder)
        ):
            raise UserError(
                f"{path} refused: tensor {tensor.name!r} keeps its data at {location!r}, outside the model's folder"
            )
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, RuntimeError, OSError) as exc:
        raise UserError(f"{path} is not a valid ONNX model: {str(exc).strip().splitlines()[0][:160]}") from None


@register_format("torch-state")
def _load_torch_state(variant: Variant, device: str) -> nn.Module:
    model = build_model(variant.config)
    return load_weights(model, extract_state_dict(load_checkpoint(variant.path / "model.pt")), str(variant.path))


# -- pruned models: plain tensors + the changed layer attributes, so no module is pickled -----------------------
_SKIP_ATTRS = {"training", "dump_patches", "call_super_init"}


def _primitive(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_primitive(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def shaped_state(model: nn.Module) -> dict:
    """What rebuilds a model whose layer shapes changed (pruning): its state dict and, per submodule, the
    public attributes that are plain values (in_channels, num_heads, ...). Loads with `weights_only=True`."""

    attrs = {}
    for name, module in model.named_modules():
        own = {}
        for key, value in vars(module).items():
            if not key.startswith("_") and key not in _SKIP_ATTRS and _primitive(value):
                own[key] = value
        attrs[name] = own
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    return {"state_dict": state, "attributes": attrs}


def rebuild_shaped(config: dict, obj: dict) -> nn.Module:
    """`build_model(config)` reshaped to `shaped_state`'s record, with its weights loaded."""

    model = build_model(config)
    modules = dict(model.named_modules())
    for name, own in obj["attributes"].items():
        if name in modules:
            for key, value in own.items():
                setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    for key, tensor in obj["state_dict"].items():
        mod_name, _, attr = key.rpartition(".")
        module = modules.get(mod_name)
        if module is None:
            raise UserError(f"pruned weights name {key!r}, which {config['arch']} does not have")
        if attr in module._parameters and module._parameters[attr] is not None:
            module._parameters[attr] = nn.Parameter(torch.empty_like(tensor), requires_grad=tensor.is_floating_point())
        elif attr in module._buffers:
            module._buffers[attr] = torch.empty_like(tensor)
    model.load_state_dict(obj["state_dict"])
    return model


@register_format("torch-pruned")
def _load_torch_pruned(variant: Variant, device: str) -> nn.Module:
    return rebuild_shaped(variant.config, load_checkpoint(variant.path / "model.pt"))


class CastInput(nn.Module):
    """Runs a reduced-precision model on float32 inputs, returning float32 logits."""

    def __init__(self, model: nn.Module, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        return self.model(x.to(self.dtype)).float()


@register_format("torch-bf16")
@register_format("torch-fp16")
def _load_half(variant: Variant, device: str) -> nn.Module:

    dtype = torch.bfloat16 if variant.format == "torch-bf16" else torch.float16
    model = rebuild_shaped(variant.config, load_checkpoint(variant.path / "model.pt"))
    return CastInput(model.to(dtype), dtype)


class ExportedModule(nn.Module):
    """A loaded `torch.export` program. Its graph is fixed in inference mode, and the program refuses
    `.eval()`/`.train()`, so this wrapper records the mode without passing it down."""

    def __init__(self, program: nn.Module):
        super().__init__()
        self.program = program

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.program(x)


@register_format("torch-export", needs_trust=True)
@register_format("torch-export-int8", needs_trust=True)
def _load_torch_export(variant: Variant, device: str) -> nn.Module:
    """A `torch.export` program (PT2E int8 and others) on `device`; runs eagerly, fast after torch.compile with
    freezing. A program also holds devices in its graph (torch.export asserts each input's device): `.to()` on
    its module moves the weights only, and a program moved that way fails on the GPU with "Tensor device
    mismatch! Expected: cpu, Got: cuda:0". torch.export's own pass moves both."""
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantize/dequantize ops the program calls)

    if variant.format == "torch-export-int8":
        # Importing torchao's x86 quantizer registers inductor's int8 passes (weight prepack, conv/linear +
        # ReLU/add fusion into oneDNN qconv/qlinear). A process that only loads the program lacks them, and
        # inductor then compiles every int8 layer as dequantize -> fp32 conv -> quantize, losing most of int8's
        # speed.
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401

    # One read: the bytes checked against the store's digest are the bytes loaded.
    data = read_verified(variant, "model.pt2", needs_seal=True)
    program = load_program(data, f"variant {variant.id}: {variant.path / 'model.pt2'}")
    if torch.device(device) != torch.device("cpu"):
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, indexed_device(device))
    return ExportedModule(program.module())


def indexed_device(device: str):
    """`device` with its index (`cuda` -> `cuda:0`), as a program must assert it: inputs arrive on `cuda:0`,
    and torch.compile's fake tensors compare the device a program asserts exactly ("Tensor device mismatch!
    Expected: cuda, Got: cuda:0"), where eager torch lets `cuda` stand for any index."""

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev
