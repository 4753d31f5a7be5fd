"""`quantize`: one stage, a table of methods (int8-pt2e, int8-ort, int8-nncf, int8-nncf-ac, dynamic, dynamic-pt2e,
qat, fp16, bf16).

Each method is a function `(stage, parent module or file, data, tmp_dir) -> extra metrics` plus the format it
writes, the options it uses (only those enter the variant's config and id) and, where the machine cannot run
it, the reason. Calibration always draws training images (`calibration_subset`), never test images; a method
that checks accuracy while it quantizes (int8-nncf-ac) checks it on validation images, never test images.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from deploybench.artifacts.formats import EAGER_FORMATS, load_module, onnx_path, shaped_state
from deploybench.errors import UserError, unknown_choice
from deploybench.optimize import float_layers
from deploybench.optimize.base import Stage, StageConfig, StageData, register_stage, stage_data
from deploybench.optimize.choices import CALIB_METHODS, QUANT_METHODS, QuantMethod
from deploybench.optimize.export import ensure_onnx
from deploybench.platform.env import has_int8_dot_product, has_native_bf16
from deploybench.profile.latency import Protocol, time_runs
from deploybench.store import Variant, Workspace
from deploybench.train.engine import StepBudget, make_scheduler
from deploybench.train.recipes import Recipe


@dataclass(frozen=True)
class QuantizeConfig(StageConfig):
    method: str = "int8-pt2e"
    calib_size: int = 512  # training images the int8 ranges are calibrated on
    calib_method: str = "minmax"  # int8-ort: minmax | entropy | percentile
    reduce_range: bool | None = None  # int8-ort: 7-bit weights; None = on where the CPU lacks VNNI (see _int8_ort)
    qat_epochs: int = 1  # qat: epochs of quantization-aware training from the parent's weights
    qat_lr: float = 1e-3  # qat: SGD learning rate (cosine to zero)
    qat_minutes: float | None = None  # qat: train for the steps that fit in this time (at most qat_epochs)
    max_drop: float = 0.01  # int8-nncf-ac: largest allowed top-1 drop on validation images (0.01 = 1 point)
    val_size: int = 1000  # int8-nncf-ac, float_layers sensitive:K: validation images (the first of the split) used
    float_layers: str = ""  # int8-pt2e, int8-ort: layers left in float (`optimize.float_layers`); "" none
    seed: int = 0

    UNSET: ClassVar[dict[str, object]] = {"float_layers": "", "qat_minutes": None}

    def to_dict(self) -> dict:
        """The options that enter the config and id: the method's own (`choices.QUANT_METHODS`) that are set, and
        `val_size` of the float-layer methods only where `float_layers` measures sensitivity."""
        uses = QUANT_METHODS[self.method].options
        out = {k: v for k, v in super().to_dict().items() if k == "method" or k in uses}
        if "float_layers" in uses and not float_layers.parse(self.float_layers).sensitive:
            out.pop("val_size", None)
        return out


@dataclass(frozen=True)
class Method:
    """A method of `choices.QUANT_METHODS` with its implementation and what this machine says of it."""

    spec: QuantMethod
    fn: Callable
    unavailable: Callable[[], str | None] = lambda: None  # why this machine cannot run it, or None
    # Why `optimize all` leaves it out on this machine although it can run (it would only be slower), or None.
    not_worth_it: Callable[[], str | None] = lambda: None

    @property
    def name(self) -> str:
        return self.spec.name

    def left_out_of_all(self) -> str | None:
        """Why `optimize all` skips this method here, or None."""
        if why := self.unavailable():
            return why
        if why := self.not_worth_it():
            return f"{why} (optimize quantize --method {self.name} makes it anyway)"
        return None


METHODS: dict[str, Method] = {}


def method(name: str, **machine_facts):
    """Implement `QUANT_METHODS[name]` by the decorated `fn(stage, parent module or file, data, tmp_dir)`."""

    def wrap(fn):
        METHODS[name] = Method(QUANT_METHODS[name], fn, **machine_facts)
        return fn

    return wrap


def _calibration_batches(data: StageData, cfg: QuantizeConfig, batch_size: int = 64):
    loader = DataLoader(data.calibration(cfg.calib_size, cfg.seed), batch_size=batch_size)
    return (x for x, _ in loader)


def _batch_dim():
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def _drop_unused_weights(graph_module: torch.fx.GraphModule) -> int:
    """Remove parameters/buffers the graph no longer reads (convert_pt2e leaves the fp32 originals of the
    weights it folded into int8 constants; exporting them again would store every weight twice)."""
    graph_module.graph.eliminate_dead_code()
    used = {n.target for n in graph_module.graph.nodes if n.op == "get_attr"}
    dropped = 0
    for name, _ in list(graph_module.named_parameters()) + list(graph_module.named_buffers()):
        if name not in used:
            prefix, _, attr = name.rpartition(".")
            owner = graph_module.get_submodule(prefix) if prefix else graph_module
            owner._parameters.pop(attr, None)
            owner._buffers.pop(attr, None)
            dropped += 1
    graph_module.recompile()
    return dropped


_DROPOUTS = {
    torch.ops.aten.dropout.default,
    torch.ops.aten.feature_dropout.default,
    torch.ops.aten.alpha_dropout.default,
    torch.ops.aten.feature_alpha_dropout.default,
}


def _strip_dropout(graph_module: torch.fx.GraphModule) -> int:
    """Replace dropout nodes by their input. A QAT graph is exported in train mode and
    `move_exported_model_to_eval` leaves `aten.dropout(x, p, train=True)` / `feature_dropout` in it, which
    would make the int8 program random at inference."""
    removed = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_function" and node.target in _DROPOUTS:
            node.replace_all_uses_with(node.args[0])
            graph_module.graph.erase_node(node)
            removed += 1
    graph_module.recompile()
    return removed


def _save_program(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(module, (example,), dynamic_shapes=_batch_dim())
    torch.export.save(program, str(path))


# -- PT2E static int8 (torchao) -------------------------------------------------------------------------------------
def _one_partition_per_call(graph_module: torch.fx.GraphModule) -> int:
    """Give each call of a module its own source partition; returns how many nodes were relabelled.

    X86InductorQuantizer finds its fusion patterns (conv + add + ReLU, ...) in partitions keyed by the module
    that made the nodes (`source_fn_stack`, or the innermost `nn_module_stack` entry, which is all a non-strict
    export records) and refuses a partition with two outputs ("Input partition has more than one output
    node"). torchvision's ResNet blocks call one `self.relu` twice, so both ReLUs of a block share a partition
    and, left so, resnet18 cannot be quantized. The nodes of one call are connected to each other and those of
    separate calls are not: every connected set after the first gets a name of its own."""

    def key(node):
        if node.meta.get("source_fn_stack"):
            return "source_fn_stack", node.meta["source_fn_stack"][-1][0]
        if node.op == "call_function" and node.meta.get("nn_module_stack"):
            return "nn_module_stack", next(reversed(node.meta["nn_module_stack"].values()))[0]
        return None

    def rename(node, field, suffix):
        if field == "source_fn_stack":
            *outer, (name, source) = node.meta[field]
            node.meta[field] = [*outer, (name + suffix, source)]
        else:
            stack = node.meta[field] = dict(node.meta[field])
            last = next(reversed(stack))
            stack[last] = (stack[last][0] + suffix, stack[last][1])

    groups: dict = {}
    for node in graph_module.graph.nodes:
        if (k := key(node)) is not None:
            groups.setdefault(k, []).append(node)
    relabelled = 0
    for (field, _), nodes in groups.items():
        members, calls = set(nodes), []
        for node in nodes:  # graph order: a call's own inputs come before it
            linked = [c for c in calls if any(a in c for a in node.all_input_nodes if a in members)]
            calls = [c for c in calls if c not in linked] + [set().union({node}, *linked)]
        calls.sort(key=lambda c: min(nodes.index(n) for n in c))
        for i, call in enumerate(calls[1:], start=1):
            for node in call:
                rename(node, field, f"__call{i}")
                relabelled += 1
    return relabelled


def _export_for_pt2e(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    graph = torch.export.export(model, (example,), dynamic_shapes=_batch_dim()).module()
    _one_partition_per_call(graph)
    return graph


def _x86_quantizer(is_qat: bool = False, dynamic: bool = False, float_modules=(), only: str | None = None):
    """X86InductorQuantizer: static int8 of every supported layer but the modules `float_modules` (or of module
    `only` alone), or (`dynamic`) dynamic int8 of nn.Linear only."""
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer()
    if dynamic:
        return quantizer.set_module_type_qconfig(
            nn.Linear, get_default_x86_inductor_quantization_config(is_dynamic=True)
        )
    config = get_default_x86_inductor_quantization_config(is_qat=is_qat)
    if only is not None:
        return quantizer.set_module_name_qconfig(only, config)
    quantizer.set_global(config)
    for name in float_modules:  # a module's config of None leaves its layers unannotated, in float
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


def _validation_items(data: StageData, cfg: QuantizeConfig) -> DataLoader:
    """The first `val_size` validation images (never test images), for measuring a layer's sensitivity."""
    val = Subset(data.splits.val, range(min(cfg.val_size, len(data.splits.val))))
    if not len(val):
        raise UserError("--float-layers sensitive:K needs validation images; this dataset's validation split is empty")
    return DataLoader(val, batch_size=250)


def _top1(logits_of: Callable, items: DataLoader) -> float:
    correct = total = 0
    for x, y in items:
        correct += int((np.asarray(logits_of(x)).argmax(1) == y.numpy()).sum())
        total += len(y)
    return correct / total


def _float_layer_facts(kept: list[str], sensitivity: dict[str, float], spec) -> dict:
    if not spec:
        return {}
    return dict(float_layers=kept, **({"layer_sensitivity": sensitivity} if sensitivity else {}))


@method("int8-pt2e")
def _int8_pt2e(stage, model: nn.Module, data: StageData, d: Path) -> dict:
    """Static int8 (per-channel weights, per-tensor activations) for the x86 Inductor backend, with the layers
    of `float_layers` left in float."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    cfg = stage.config
    example = data.example(2)
    model = model.eval()

    def quantize(**which):
        prepared = prepare_pt2e(_export_for_pt2e(model, example), _x86_quantizer(**which))
        images = 0
        with torch.no_grad():
            for x in _calibration_batches(data, cfg):
                prepared(x)
                images += len(x)
        return convert_pt2e(prepared), images

    spec = float_layers.parse(cfg.float_layers)
    kept, sensitivity = [], {}
    if spec:
        items = _validation_items(data, cfg) if spec.sensitive else None
        with torch.no_grad():
            fp32 = _top1(model, items) if items else 0.0

        @torch.no_grad()
        def drop_alone(name: str) -> float:
            return fp32 - _top1(quantize(only=name)[0], items)

        kept, sensitivity = float_layers.choose(float_layers.torch_layers(model), spec, drop_alone)
    converted, images = quantize(float_modules=kept)
    _drop_unused_weights(converted)
    _save_program(converted, example, d / "model.pt2")
    return dict(
        calibration_images=images, quantizer="X86InductorQuantizer", **_float_layer_facts(kept, sensitivity, spec)
    )


# QAT's learning rate: cosine from `qat_lr` to zero over the steps it takes (`train.engine` builds and resizes it).
_QAT_SCHEDULE = Recipe(schedule="cosine")


@method("qat")
def _qat(stage, model: nn.Module, data: StageData, d: Path) -> dict:
    """PT2E quantization-aware training from the parent's weights (fake-quant in the loop), then int8. With
    `qat_minutes` it takes the steps that fit in that time (timed on its first steps, as `train --budget-minutes`
    is; at most `qat_epochs` epochs; the cosine spans them); a run shorter than the timed steps runs whole."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    cfg = stage.config
    torch.manual_seed(cfg.seed)
    example = data.example(2)
    graph = _export_for_pt2e(model.train(), example)
    prepared = prepare_qat_pt2e(graph, _x86_quantizer(is_qat=True))
    train = data.splits.train  # the training images (eval transforms: no augmentation for a short QAT run)
    loader = DataLoader(
        train, batch_size=64, shuffle=True, drop_last=len(train) > 64, generator=torch.Generator().manual_seed(cfg.seed)
    )
    opt = torch.optim.SGD(prepared.parameters(), lr=cfg.qat_lr, momentum=0.9)
    budget = StepBudget(cfg.qat_minutes, cfg.qat_epochs * len(loader))
    sched = make_scheduler(opt, _QAT_SCHEDULE, budget.limit)
    done = images = 0
    move_exported_model_to_train(prepared)
    for x, y in itertools.chain.from_iterable(itertools.repeat(loader, cfg.qat_epochs)):
        loss = nn.functional.cross_entropy(prepared(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        done, images = done + 1, images + len(y)
        budget.on_step(lambda s, done=done: budget.resize(sched, opt, _QAT_SCHEDULE, done, s, len(loader), "qat"))
        if done >= budget.total > 0:
            break
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    _strip_dropout(converted)
    _drop_unused_weights(converted)
    _save_program(converted, example, d / "model.pt2")
    return dict(qat_images=images, qat_steps=done, qat_epochs_done=round(done / len(loader), 2))


# -- ONNX Runtime static QDQ int8 -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _ort_refusal(path: Path):
    """ONNX Runtime's own errors (`onnxruntime_pybind11_state.Fail`, `InvalidGraph`, ...: an operator of a custom
    domain it has no kernel for, a graph it rejects) as one UserError naming `path`; other errors pass through."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        why = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", " ".join(str(exc).split()))[:240]
        raise UserError(f"int8-ort cannot quantize {path}: ONNX Runtime refuses it ({why})") from None


def _check_ort_loads(path: Path) -> None:
    """Refuse, in one line, an ONNX model that ONNX Runtime cannot load (an operator of a custom domain, ...)."""
    import onnxruntime as ort

    with _ort_refusal(path):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@method("int8-ort")
def _int8_ort(stage, parent_onnx: Path, data: StageData, d: Path) -> dict:
    """S8S8 QDQ, per-channel weights, after `quant_pre_process` (shape inference + basic optimizations).

    On x86 CPUs without VNNI, ONNX Runtime runs int8 convolutions and GEMMs with VPMADDUBSW, which adds pairs of
    8-bit products into 16 bits and saturates when weights use the full int8 range; `reduce_range` (7-bit
    weights) avoids that, which is why it defaults to on exactly there (ONNX Runtime's own advice)."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    cfg = stage.config
    with _ort_refusal(parent_onnx):
        input_name = ort.InferenceSession(str(parent_onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = ({input_name: x.numpy().astype(np.float32)} for x in _calibration_batches(data, cfg))

        def get_next(self):
            return next(self.batches, None)

    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calib_method]

    def quantize(src: Path, dst: Path, **nodes) -> None:
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            reduce_range=bool(cfg.reduce_range),
            extra_options={"CalibTensorRangeSymmetric": False},
            **nodes,
        )

    spec = float_layers.parse(cfg.float_layers)
    kept, sensitivity = [], {}
    with tempfile.TemporaryDirectory() as work:
        pre = Path(work) / "pre.onnx"
        with _ort_refusal(parent_onnx):
            quant_pre_process(str(parent_onnx), str(pre))
            if spec:
                kept, sensitivity = _ort_float_layers(pre, spec, quantize, data, cfg)
            quantize(pre, d / "model.onnx", nodes_to_exclude=kept)
    return dict(
        calibration_images=min(cfg.calib_size, len(data.splits.train)),
        calib_method=cfg.calib_method,
        reduce_range=bool(cfg.reduce_range),
        **_float_layer_facts(kept, sensitivity, spec),
    )


def _ort_float_layers(pre: Path, spec, quantize: Callable, data: StageData, cfg) -> tuple[list[str], dict]:
    """The nodes of the pre-processed ONNX model `pre` that int8-ort leaves in float (unnamed layer nodes are
    named first, in `pre` itself), and their measured sensitivities."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(pre))
    if float_layers.name_onnx_layers(graph):
        onnx.save(graph, str(pre))
    items = _validation_items(data, cfg) if spec.sensitive else None

    def top1(path: Path) -> float:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return _top1(lambda x: session.run(None, {name: x.numpy().astype(np.float32)})[0], items)

    fp32 = top1(pre) if items else 0.0

    def drop_alone(node: str) -> float:
        alone = pre.with_name(f"alone-{node.replace('/', '_')}.onnx")
        quantize(pre, alone, nodes_to_quantize=[node])
        return fp32 - top1(alone)

    return float_layers.choose(float_layers.onnx_layers(graph), spec, drop_alone)


# -- NNCF post-training int8 for OpenVINO --------------------------------------------------------------------------
def _nncf_missing(name: str = "int8-nncf") -> str | None:
    """Why method `name` cannot run here (nncf or openvino does not import), or None."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"{name} needs the nncf and openvino packages ({exc})"
    return None


def _nncf_dataset(images):
    """`images` as an nncf.Dataset of one image per item (NNCF's subset_size counts items, and its statistics
    assume a batch of one); an item is (image [1,C,H,W], label [1]), the model's input its fp32 image."""
    import nncf

    return nncf.Dataset(DataLoader(images, batch_size=1), lambda item: item[0].numpy().astype(np.float32))


def _save_ir(model, d: Path) -> None:
    import openvino as ov

    # compress_to_fp16=False: the weights NNCF left in fp32 stay fp32 on disk (the default halves them).
    ov.save_model(model, str(d / "model.xml"), compress_to_fp16=False)


@method("int8-nncf", unavailable=_nncf_missing)
def _int8_nncf(stage, parent_onnx: Path, data: StageData, d: Path) -> dict:
    """NNCF's post-training quantization (default preset: symmetric int8 activations, per-channel weights) of the
    fp32 ONNX model as OpenVINO reads it, calibrated on the same training images as the other int8 methods,
    saved as IR (model.xml + model.bin)."""
    import nncf
    import openvino as ov

    cfg = stage.config
    calib = data.calibration(cfg.calib_size, cfg.seed)
    model = ov.Core().read_model(str(parent_onnx))
    _save_ir(nncf.quantize(model, _nncf_dataset(calib), subset_size=len(calib)), d)
    return dict(
        calibration_images=len(calib),
        quantizer="nncf.quantize (OpenVINO)",
        nncf_version=nncf.__version__,
        openvino_version=ov.get_version(),
    )


def _top1_per_image(compiled, items) -> list[float]:
    """1.0 or 0.0 per image of `items` ((image, label) batches) through an OpenVINO compiled model."""
    out = compiled.output(0)
    correct = []
    for x, y in items:
        logits = compiled([x.numpy().astype(np.float32)])[out]
        correct.extend((np.asarray(logits).argmax(1) == y.numpy()).astype(float).tolist())
    return correct


def _validate_top1(compiled, items) -> tuple[float, list[float]]:
    """NNCF's validation function: (top-1 over `items`, 1.0/0.0 per image). The per-image values put the
    Evaluator in metric mode, where the accuracy restorer ranks layers by the images they flip."""
    correct = _top1_per_image(compiled, items)
    return (sum(correct) / len(correct) if correct else 0.0), correct


@method("int8-nncf-ac", unavailable=functools.partial(_nncf_missing, "int8-nncf-ac"))
def _int8_nncf_ac(stage, parent_onnx: Path, data: StageData, d: Path) -> dict:
    """`nncf.quantize_with_accuracy_control`: int8-nncf's quantization (same calibration images), then layers
    are returned to fp32, the most harmful first, until top-1 on `val_size` validation images (never test
    images) is at most `max_drop` below the fp32 model's. Records the top-1 both reach there, the achieved drop
    and whether it is within `max_drop` (NNCF returns its best model even where it is not)."""
    import nncf
    import openvino as ov

    cfg = stage.config
    calib = data.calibration(cfg.calib_size, cfg.seed)
    val = Subset(data.splits.val, range(min(cfg.val_size, len(data.splits.val))))
    if not len(val):
        raise UserError("int8-nncf-ac needs validation images; this dataset's validation split is empty")
    core = ov.Core()
    model = core.read_model(str(parent_onnx))
    quantized = nncf.quantize_with_accuracy_control(
        model,
        calibration_dataset=_nncf_dataset(calib),
        validation_dataset=_nncf_dataset(val),
        validation_fn=_validate_top1,
        max_drop=cfg.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib),
    )
    _save_ir(quantized, d)
    # The achieved result, measured again on the same validation images (NNCF only logs it), compiled as NNCF
    # compiles what it validates: in fp32 (OpenVINO would otherwise lower fp32 layers to bf16 where it can).
    fp32_top1, int8_top1 = (
        _validate_top1(
            core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), DataLoader(val, batch_size=1)
        )[0]
        for m in (model, quantized)
    )
    drop = fp32_top1 - int8_top1
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    met = drop <= cfg.max_drop + 1e-9
    return dict(
        calibration_images=len(calib),
        validation_images=len(val),
        max_drop=cfg.max_drop,
        val_top1_fp32=fp32_top1,
        val_top1_int8=int8_top1,
        val_drop=drop,
        max_drop_met=met,
        fake_quantize_nodes=fake_quantize,
        note=None
        if met
        else f"NNCF could not keep the validation top-1 drop within {cfg.max_drop:g}: it is {drop:.4f}",
        quantizer="nncf.quantize_with_accuracy_control (OpenVINO)",
        nncf_version=nncf.__version__,
        openvino_version=ov.get_version(),
    )


# -- dynamic int8 of Linear layers -----------------------------------------------------------------------------------
def _linear_facts(model: nn.Module) -> dict:
    """How much of `model` a Linear-only method quantizes, with a note where that is nothing or next to nothing."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(p.numel() for p in model.parameters())
    share = sum(p.numel() for m in linears for p in m.parameters()) / max(total, 1)
    note = None
    if not linears:
        note = "no Linear layers: dynamic quantization changed nothing"
    elif share < 0.2:
        note = f"Linear layers hold only {100 * share:.0f}% of the weights: expect no measurable change"
    return dict(quantized_linear_layers=len(linears), linear_params_share=share, note=note)


INT_MM_SHAPE = (64, 384, 1536)  # (tokens, in, out) of one vit-small MLP projection


def int_mm_times(runs: int = 5) -> tuple[float, float]:
    """Median ms of one `torch._int_mm` product of `INT_MM_SHAPE` and of the same product in fp32, on this CPU
    (one warm-up call each, then `runs` timed calls): what `_int_mm_slow` decides on, and what
    `benchmarks/probe_dynamic_int8.py` prints."""
    m, k, n = INT_MM_SHAPE
    g = torch.Generator().manual_seed(0)
    a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
    b8 = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
    a32, b32 = a8.float(), b8.float()
    protocol = Protocol(warmup=1, min_runs=runs, min_seconds=0)
    int8_ms, fp32_ms = (
        1e3 * float(np.median(time_runs(call, protocol)))
        for call in (lambda: torch._int_mm(a8, b8), lambda: torch.mm(a32, b32))
    )
    return int8_ms, fp32_ms


@functools.lru_cache(maxsize=1)
def _int_mm_slow() -> str | None:
    """Why torchao's `dynamic` program is not worth making here, or None: measured, not assumed.

    The program multiplies int8 by int8 with `torch._int_mm`, fast on CUDA. On a CPU it can be many times slower
    than fp32, nearly all of the time going to `_int_mm` (`benchmarks/probe_dynamic_int8.py` shows where), and
    evaluating a vit-small variant then crawls. Which way it goes differs from CPU to CPU, so without CUDA, one
    `_int_mm` product of `INT_MM_SHAPE` is timed against the same product in fp32 on this CPU, and the method
    is left out of `optimize all` when it is the slower."""
    if torch.cuda.is_available():
        return None
    try:
        int8_ms, fp32_ms = int_mm_times()
    except RuntimeError as exc:  # a CPU build without an int8 matmul kernel
        return f"torch._int_mm, which torchao's dynamic int8 multiplies with, does not run on this CPU: {exc}"
    if int8_ms <= fp32_ms:
        return None
    m, k, n = INT_MM_SHAPE
    return (
        f"torch._int_mm, which torchao's dynamic int8 multiplies with, took {int8_ms:.2f} ms on this CPU "
        f"against {fp32_ms:.2f} ms for the same {m}x{k}x{n} product in fp32 (measured now): its variant "
        f"would only be slower; dynamic-pt2e is the CPU form"
    )


@method("dynamic", not_worth_it=_int_mm_slow)
def _dynamic(stage, model: nn.Module, data: StageData, d: Path) -> dict:
    """int8 weights, activations quantized per token at run time, on every nn.Linear (torchao `quantize_`); its
    int8 products run `torch._int_mm`, the CUDA form (see `_int_mm_slow`)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    facts = _linear_facts(model)
    if facts["quantized_linear_layers"]:
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
    _save_program(model.eval(), data.example(2), d / "model.pt2")
    return dict(facts, note=facts["note"] or _int_mm_slow())  # made anyway where `optimize all` leaves it out


@method("dynamic-pt2e")
def _dynamic_pt2e(stage, model: nn.Module, data: StageData, d: Path) -> dict:
    """int8 weights (per channel), activations quantized per tensor at run time, on every nn.Linear, for the x86
    Inductor backend (PT2E, X86InductorQuantizer with `is_dynamic`), which compiles them to oneDNN int8 linears:
    the CPU form of `dynamic`."""
    example = data.example(2)
    _save_program(_dynamic_pt2e_program(model, example), example, d / "model.pt2")
    return dict(_linear_facts(model), quantizer="X86InductorQuantizer(is_dynamic=True), nn.Linear")


def _dynamic_pt2e_program(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """`model` (fp32) as a PT2E dynamic int8 graph. No calibration: one pass over `example` lets the weight
    observers read the weights; activation ranges are taken at run time. Without a Linear layer: the plain graph."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = _export_for_pt2e(model.eval(), example)
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return graph
    prepared = prepare_pt2e(graph, _x86_quantizer(dynamic=True))
    with torch.no_grad():
        prepared(example)
    converted = convert_pt2e(prepared)
    _drop_unused_weights(converted)
    return converted


# -- half precision -------------------------------------------------------------------------------------------------
def _no_cuda() -> str | None:
    return None if torch.cuda.is_available() else "fp16 needs a GPU (CUDA); this machine has none (use bf16 on CPU)"


def _bf16_emulated() -> str | None:
    """Why bf16 is not worth making here: without a GPU or native bf16 (AVX512-BF16, AMX) torch emulates it,
    slower than fp32, so its variant takes long to make and evaluate and gains nothing."""
    if torch.cuda.is_available() or has_native_bf16():
        return None
    return "this CPU has no native bf16 (AVX512-BF16 or AMX) and there is no GPU: bf16 is emulated, slower than fp32"


def _half(dtype):
    def fn(stage, model: nn.Module, data: StageData, d: Path) -> dict:
        torch.save(shaped_state(model.to(dtype)), d / "model.pt")
        note = _bf16_emulated() if dtype is torch.bfloat16 else None
        return dict(
            dtype=str(dtype).removeprefix("torch."), cpu_capability=torch.backends.cpu.get_cpu_capability(), note=note
        )

    return fn


method("bf16", not_worth_it=_bf16_emulated)(_half(torch.bfloat16))
method("fp16", unavailable=_no_cuda)(_half(torch.float16))


@register_stage
class QuantizeStage(Stage):
    """Quantization or reduced precision of a variant, by `method`."""

    name = "quantize"
    Config = QuantizeConfig

    def __init__(self, config: QuantizeConfig | None = None, **options):
        super().__init__(config, **options)
        if self.config.method not in METHODS:
            raise unknown_choice("quantization method", self.config.method, METHODS)
        if self.config.calib_method not in CALIB_METHODS:
            raise unknown_choice("calibration method", self.config.calib_method, CALIB_METHODS)
        if self.config.calib_size < 1:
            raise UserError("--calib-size must be at least 1")
        if not 0 <= self.config.max_drop < 1:
            raise UserError(
                f"--max-drop is a top-1 drop as a fraction (0.01 = 1 point), from 0 to below 1; "
                f"got {self.config.max_drop}"
            )
        if self.config.val_size < 1:
            raise UserError(f"--val-size must be at least 1, got {self.config.val_size}")
        if self.config.method == "qat" and (self.config.qat_epochs < 1 or not self.config.qat_lr > 0):
            raise UserError(
                f"qat needs --qat-epochs of 1 or more and a learning rate above 0, got "
                f"{self.config.qat_epochs} and {self.config.qat_lr}"
            )
        if self.config.qat_minutes is not None and not self.config.qat_minutes > 0:
            raise UserError(f"--qat-minutes must be above 0, got {self.config.qat_minutes}")
        uses = QUANT_METHODS[self.config.method].options
        self.config = replace(self.config, float_layers=float_layers.canonical(self.config.float_layers))
        if self.config.float_layers and "float_layers" not in uses:
            users = " / ".join(m.name for m in QUANT_METHODS.values() if "float_layers" in m.options)
            raise UserError(f"--float-layers is an option of --method {users}, not of {self.config.method}")
        if "reduce_range" in uses and self.config.reduce_range is None:
            # The default depends on the CPU; resolved here, it is part of the variant's config and id.

            self.config = replace(self.config, reduce_range=not has_int8_dot_product())

    def run(self, ws: Workspace, parent: Variant, data_dir) -> Variant:
        m = METHODS[self.config.method]
        spec = m.spec
        reason = m.unavailable()
        if reason:
            raise UserError(reason)
        if spec.onnx_parent:
            parent = ensure_onnx(ws, parent, data_dir)
            _check_ort_loads(onnx_path(parent))  # before the parent is run for its logits, or anything is written
        elif parent.format not in EAGER_FORMATS:
            raise UserError(
                f"quantize --method {self.config.method} needs an fp32 PyTorch variant (trained or "
                f"pruned); {parent.id} is {parent.format}"
            )
        data = stage_data(ws, parent, data_dir)

        def write(d: Path) -> dict:
            source = onnx_path(parent) if spec.onnx_parent else load_module(parent)
            return dict(m.fn(self, source, data, d), compute_dtype=spec.compute_dtype)

        return self.make_variant(ws, parent, data_dir, fmt=spec.fmt, write=write)
