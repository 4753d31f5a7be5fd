"""The search space, declared once: what a trial may choose (`search_space`, one table of `Dim`s) and what each
backend can run (`BACKEND_SPACES`), so that a recipe a backend cannot run is never proposed.

A trial's choices become a `TrialRecipe`, and the recipe becomes the ordinary stages (prune, quantize, export)
run from the trained variant: a recipe made before is found by its content-addressed id and costs nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from deploybench.errors import UserError, unknown_choice
from deploybench.optimize.base import Stage
from deploybench.optimize.choices import CALIB_METHODS, PRUNE_IMPORTANCES, QUANT_METHODS
from deploybench.optimize.export import ExportStage
from deploybench.optimize.float_layers import KINDS as FLOAT_KINDS
from deploybench.optimize.pipeline import default_chains
from deploybench.optimize.prune import PruneStage
from deploybench.optimize.quantize import METHODS, QuantizeStage
from deploybench.profile.backends import get_backend

NO_QUANTIZATION = "none"


@dataclass(frozen=True)
class _Format:
    """Stands for a variant of format `format` when a backend is asked whether it runs it."""

    format: str


@dataclass(frozen=True)
class BackendSpace:
    """What a backend runs: the quantization methods a trial may pick (`none` keeps fp32), whether its variants
    are ONNX exports or made from one (an export ends every other chain), and whether a trial picks the thread
    count: an ONNX Runtime session or OpenVINO compiled model owns its threads, while torch has one pool per
    process, shared with the fp32 variant it is timed against, so torch backends run at the study's thread count."""

    name: str
    methods: tuple[str, ...]
    onnx: bool
    threads: bool

    def runs(self, fmt: str) -> bool:
        """Whether the backend runs variants of format `fmt` (its own `supports`)."""
        return get_backend(self.name).supports(_Format(fmt))[0]


BACKEND_SPACES: dict[str, BackendSpace] = {
    s.name: s
    for s in (
        BackendSpace("ort-cpu", (NO_QUANTIZATION, "int8-ort"), onnx=True, threads=True),
        BackendSpace("ort-cuda", (NO_QUANTIZATION, "int8-ort"), onnx=True, threads=False),
        BackendSpace("ort-tensorrt", (NO_QUANTIZATION, "int8-ort"), onnx=True, threads=False),
        BackendSpace("openvino-cpu", (NO_QUANTIZATION, "int8-nncf", "int8-ort"), onnx=True, threads=True),
        # Eager torch runs int8 programs through reference kernels, slower than fp32: only reduced precision here.
        BackendSpace("torch-cpu", (NO_QUANTIZATION, "bf16"), onnx=False, threads=False),
        BackendSpace(
            "torch-compile-cpu", (NO_QUANTIZATION, "int8-pt2e", "dynamic-pt2e", "bf16"), onnx=False, threads=False
        ),
        BackendSpace("torch-cuda", (NO_QUANTIZATION, "fp16", "bf16"), onnx=False, threads=False),
        BackendSpace("torch-compile-cuda", (NO_QUANTIZATION, "fp16", "bf16"), onnx=False, threads=False),
    )
}


def output_format(stage: Stage) -> str:
    """The format of the variant `stage` makes."""
    if isinstance(stage, QuantizeStage):
        return QUANT_METHODS[stage.config.method].fmt
    return "onnx" if isinstance(stage, ExportStage) else "torch-pruned"


def backend_space(backend: str) -> BackendSpace:
    """The space of `backend`; a backend without one is a UserError listing those that have one."""
    if backend not in BACKEND_SPACES:
        raise unknown_choice("backend for search", backend, BACKEND_SPACES)
    return BACKEND_SPACES[backend]


def methods_here(backend: str) -> tuple[str, ...]:
    """The backend's quantization methods that this machine can make and that would not only be slower here
    (bf16 only where the CPU has it natively or on a GPU; the same rule `optimize all` follows)."""
    return tuple(
        m for m in backend_space(backend).methods if m == NO_QUANTIZATION or METHODS[m].left_out_of_all() is None
    )


@dataclass(frozen=True)
class Dim:
    """One choice of a trial: categorical (`choices`) or numeric (`low`..`high`, ints unless a bound is a float,
    `step` for floats), active only when `when(params chosen before it)` holds."""

    name: str
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | None = None
    when: Callable[[dict], bool] = lambda params: True
    why: str = ""

    def admits(self, value) -> bool:
        """Whether `value` is one of this choice's values."""
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not self.low <= value <= self.high:
            return False
        if self.step is not None:
            return abs((value - self.low) / self.step - round((value - self.low) / self.step)) < 1e-9
        return isinstance(self.low, float) or isinstance(self.high, float) or float(value).is_integer()

    def suggest(self, trial):
        """Ask the Optuna trial for this choice."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if isinstance(self.low, float) or isinstance(self.high, float):
            return trial.suggest_float(self.name, self.low, self.high, step=self.step)
        return trial.suggest_int(self.name, self.low, self.high)


def _pruned(p: dict) -> bool:
    return p["prune_ratio"] > 0


def _finetuned(p: dict) -> bool:
    return _pruned(p) and p["finetune_epochs"] > 0


def _quantized(p: dict) -> bool:
    return p["quantize"] != NO_QUANTIZATION


def _calibrated(p: dict) -> bool:
    return p["quantize"] in ("int8-ort", "int8-pt2e")


def float_layer_choices(layer_kinds: frozenset, layers: int) -> tuple[str, ...]:
    """`--float-layers` values worth trying on a model with `layers` layers of which some are of `layer_kinds`:
    none, each kind it has (and both), and its 1 or 2 most sensitive layers (one layer always stays int8)."""
    kinds = [k for k in FLOAT_KINDS if k in layer_kinds]
    by_kind = kinds + ([",".join(kinds)] if len(kinds) > 1 else [])
    return ("none", *by_kind, *(f"sensitive:{k}" for k in (1, 2) if k < layers))


def search_space(
    backend: str,
    *,
    max_threads: int,
    has_batchnorm: bool,
    layer_kinds: frozenset = frozenset(),
    layers: int = 0,
) -> tuple[Dim, ...]:
    """The table of choices, in the order they are asked (a choice's `when` reads the ones before it).

    Args:
        backend: the target backend (its methods and whether threads are chosen).
        max_threads: the most threads a trial may use (the machine's physical cores).
        has_batchnorm: whether the model has BatchNorm layers (bn-scale importance ranks by their scales).
        layer_kinds, layers: the kinds of layer the model has (`optimize.float_layers.KINDS`) and how many
            convolution and linear layers: which layers an int8 method may leave in float.
    Returns:
        the dims.
    """
    space = backend_space(backend)
    return (
        # 0.05 steps: finer ratios remove the same whole channels from small layers, and a repeated ratio is a
        # repeated recipe, which costs nothing.
        Dim("prune_ratio", low=0.0, high=0.8, step=0.05, why="share of channels removed; 0 is no pruning"),
        Dim(
            "importance",
            choices=tuple(i for i in PRUNE_IMPORTANCES if has_batchnorm or i != "bn-scale"),
            when=_pruned,
            why="how channels are ranked",
        ),
        Dim("global_pruning", choices=(False, True), when=_pruned, why="rank across layers instead of per layer"),
        Dim(
            "round_to",
            choices=(0, 8, 16, 32),
            when=_pruned,
            why="keep channel counts multiples of N (0: any); int8 kernels run unaligned counts slower",
        ),
        Dim("iterative_steps", low=1, high=3, when=_pruned, why="prune in K steps"),
        # Up to 12: a heavily pruned model keeps recovering past 6 epochs, and rung 0 screens a recipe before it
        # pays for them.
        Dim("finetune_epochs", low=0, high=12, when=_pruned, why="fine-tuning epochs at full fidelity"),
        Dim("distill", choices=(False, True), when=_finetuned, why="distill from the unpruned parent"),
        Dim("quantize", choices=methods_here(backend), why="quantization method; none keeps fp32"),
        Dim("calib_size", choices=(128, 256, 512, 1024), when=_calibrated, why="training images calibrated on"),
        Dim(
            "calib_method",
            choices=CALIB_METHODS,
            when=lambda p: p["quantize"] == "int8-ort",
            why="int8-ort's range estimate",
        ),
        Dim(
            "float_layers",
            choices=float_layer_choices(layer_kinds, layers),
            when=lambda p: _quantized(p) and "float_layers" in QUANT_METHODS[p["quantize"]].options,
            why="layers the int8 method leaves in float: by kind, or the K most sensitive (measured on validation)",
        ),
        Dim(
            "threads",
            low=1,
            high=max_threads,
            when=lambda p: space.threads and max_threads > 1,
            why="intra-op threads of the session",
        ),
    )


def suggest(trial, dims: tuple[Dim, ...]) -> dict:
    """The active choices of `dims` drawn for `trial` (inactive ones are absent)."""
    params: dict = {}
    for dim in dims:
        if dim.when(params):
            params[dim.name] = dim.suggest(trial)
    return params


@dataclass(frozen=True)
class TrialRecipe:
    """A trial's recipe: its choices with the defaults of the inactive ones filled in."""

    prune_ratio: float = 0.0
    importance: str = "magnitude"
    global_pruning: bool = False
    round_to: int = 0
    iterative_steps: int = 1
    finetune_epochs: int = 0
    distill: bool = False
    quantize: str = NO_QUANTIZATION
    calib_size: int = 512
    calib_method: str = "minmax"
    float_layers: str = "none"
    threads: int = 1

    @classmethod
    def from_params(cls, params: dict, *, threads: int) -> "TrialRecipe":
        """The recipe of Optuna `params`; `threads` where the trial did not choose them."""
        return cls(**dict(dict(threads=threads), **params))

    @property
    def pruned(self) -> bool:
        return self.prune_ratio > 0

    @property
    def screened(self) -> bool:
        """Whether the recipe fine-tunes, the costly step that is screened at low fidelity first."""
        return self.pruned and self.finetune_epochs > 0

    def stages(self, space: BackendSpace, finetune_fraction: float = 1.0) -> list[Stage]:
        """The stages that make the recipe's variant from the trained one. With `finetune_fraction` below 1 (the
        screening rung), the fine-tuning is one epoch over that share of the training images."""
        out: list[Stage] = []
        if self.pruned:
            screening = finetune_fraction < 1.0 and self.finetune_epochs > 0
            out.append(
                PruneStage(
                    ratio=round(self.prune_ratio, 4),
                    importance=self.importance,
                    global_pruning=self.global_pruning,
                    round_to=self.round_to,
                    iterative_steps=self.iterative_steps,
                    finetune_epochs=1 if screening else self.finetune_epochs,
                    distill=self.distill and self.finetune_epochs > 0,
                    finetune_fraction=finetune_fraction if screening else None,
                )
            )
        if self.quantize != NO_QUANTIZATION:
            uses = QUANT_METHODS[self.quantize].options
            out.append(
                QuantizeStage(
                    method=self.quantize,
                    calib_size=self.calib_size if "calib_size" in uses else None,
                    calib_method=self.calib_method if "calib_method" in uses else None,
                    float_layers=self.float_layers if "float_layers" in uses else None,
                )
            )
        exports_itself = self.quantize != NO_QUANTIZATION and QUANT_METHODS[self.quantize].onnx_parent
        if space.onnx and not exports_itself:  # int8-ort and int8-nncf export their parent first
            out.append(ExportStage())
        return out

    def describe(self) -> str:
        """One line, e.g. `prune 0.35 (magnitude, local, 1 step, 2 epochs, distilled) + int8-ort (512, minmax)`."""
        parts = []
        if self.pruned:
            ft = (
                f"{self.finetune_epochs} epoch{'s' * (self.finetune_epochs != 1)}"
                + (", distilled" if self.distill else "")
                if self.finetune_epochs
                else "no fine-tuning"
            )
            how = [self.importance, "global" if self.global_pruning else "local"]
            how += [f"channels x{self.round_to}"] * bool(self.round_to)
            how += [f"{self.iterative_steps} step{'s' * (self.iterative_steps != 1)}", ft]
            parts.append(f"prune {self.prune_ratio:.2f} ({', '.join(how)})")
        if self.quantize != NO_QUANTIZATION:
            uses = QUANT_METHODS[self.quantize].options
            calib = [str(self.calib_size)] * ("calib_size" in uses) + [self.calib_method] * ("calib_method" in uses)
            calib += [f"float: {self.float_layers}"] * ("float_layers" in uses and self.float_layers != "none")
            parts.append(self.quantize + (f" ({', '.join(calib)})" if calib else ""))
        return " + ".join(parts) or "fp32 as trained"

    def to_dict(self) -> dict:
        return asdict(self)


def _stage_keys(stages: list[Stage]) -> list[tuple]:
    """What makes a list of stages' variants: each stage's name and the options that enter its id. An export right
    before a method that exports its parent itself is the export that method makes."""
    keys = []
    for i, stage in enumerate(stages):
        nxt = stages[i + 1] if i + 1 < len(stages) else None
        if isinstance(stage, ExportStage) and isinstance(nxt, QuantizeStage):
            if QUANT_METHODS[nxt.config.method].onnx_parent and stage.config == ExportStage().config:
                continue
        keys.append((stage.name, stage.config.to_dict()))
    return keys


def menu_seeds(backend: str, dims: tuple[Dim, ...], threads: int) -> list[tuple[str, dict]]:
    """`optimize all`'s recipes that `backend` runs, as the trial params whose stages make the same variants:
    (chain name, params) per chain. A new study runs them first (Optuna's `enqueue_trial`), so the sampler starts
    from the menu's best and searches beyond it instead of spending its first generation on random recipes only.
    A chain the space cannot express (another quantizer, a value outside a choice) is left out.

    Args:
        dims: the study's space (`search_space`).
        threads: the threads of a trial that does not choose them (the study's).
    """
    space = backend_space(backend)
    seeds: list[tuple[str, dict]] = []
    for chain in default_chains():
        if not space.runs(output_format(chain.steps[-1])):
            continue
        prune = next((s.config for s in chain.steps if isinstance(s, PruneStage)), None)
        quant = next((s.config for s in chain.steps if isinstance(s, QuantizeStage)), None)
        values = dict(asdict(prune) if prune else {}, prune_ratio=prune.ratio if prune else 0.0, threads=threads)
        if quant is not None:
            values.update(asdict(quant), quantize=quant.method, float_layers=quant.float_layers or "none")
        else:
            values["quantize"] = NO_QUANTIZATION
        params: dict = {}
        for dim in dims:
            if dim.when(params):
                if dim.name not in values or not dim.admits(values[dim.name]):
                    break
                params[dim.name] = values[dim.name]
        else:
            recipe = TrialRecipe.from_params(params, threads=threads)
            if _stage_keys(recipe.stages(space)) == _stage_keys(chain.steps) and params not in (p for _, p in seeds):
                seeds.append((chain.name, params))
    return seeds


def check_objectives(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` if they are `latency` and `accuracy`, optionally `size`; else a UserError."""
    known = ("latency", "accuracy", "size")
    for name in names:
        if name not in known:
            raise unknown_choice("objective", name, known)
    if len(set(names)) != len(names) or not {"latency", "accuracy"} <= set(names):
        raise UserError(f"--objectives takes latency,accuracy and optionally size, once each; got {','.join(names)}")
    return tuple(names)
