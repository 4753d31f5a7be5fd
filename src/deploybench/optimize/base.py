"""The Stage base class, the stage registry, and what every stage shares: data, evaluation, recorded metrics.

A stage is variant in, new variant out. `Stage.make_variant` writes the files through the workspace's atomic
`create_variant`, then loads what was written on the profile backend its format runs on (as a fresh process
would) and records its accuracy on the full test split (the profile's pass on that backend: see
`profile.accuracy`), its top-1 agreement with the parent, params, MACs and the library versions that produced
it. A stage that raises leaves neither folder nor row behind.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import Subset

from deploybench.artifacts.formats import EAGER_FORMATS, load_module, torch_formats
from deploybench.data import calibration_subset, data_keys, load_splits
from deploybench.errors import UserError, unknown_choice
from deploybench.models import count_params, get_model_info
from deploybench.models.identity import code_changed
from deploybench.models.macs import count_macs
from deploybench.models.scoring import eval_result
from deploybench.platform import package_version
from deploybench.profile.accuracy import evaluate_variant
from deploybench.store import Variant, Workspace
from deploybench.train.recipes import Recipe, recipe_from_config

# Keys of a trained variant's config that rebuild the architecture; every derived variant carries them.
MODEL_KEYS = ("arch", "arch_sha256", "num_classes", "in_channels", "image_size", "transfer", "mean", "std", "dataset")
_LIBRARIES = ("torch", "torchao", "torch-pruning", "onnx", "onnxruntime", "onnxscript", "fvcore", "openvino", "nncf")


# -- registry ------------------------------------------------------------------------------------------------
_STAGES: dict[str, type["Stage"]] = {}


def register_stage(cls: type["Stage"]) -> type["Stage"]:
    """Class decorator registering a Stage subclass under `cls.name`."""
    if cls.name in _STAGES:
        raise ValueError(f"stage {cls.name!r} registered twice")
    _STAGES[cls.name] = cls
    return cls


def _ensure_loaded() -> None:
    for mod in ("export", "prune", "quantize"):  # importing a stage module registers it
        importlib.import_module(f"deploybench.optimize.{mod}")


def list_stages() -> list[str]:
    _ensure_loaded()
    return sorted(_STAGES)


def get_stage(name: str) -> type["Stage"]:
    _ensure_loaded()
    if name not in _STAGES:
        raise unknown_choice("stage", name, _STAGES)
    return _STAGES[name]


# -- data ----------------------------------------------------------------------------------------------------
@dataclass
class StageData:
    """The splits a stage needs, loaded once per (dataset, data_dir): test, calibration and train sets."""

    splits: object

    @property
    def info(self):
        return self.splits.info

    def calibration(self, n: int, seed: int = 0):
        return calibration_subset(self.splits, n, seed)

    def example(self, batch: int = 2) -> torch.Tensor:
        x = torch.stack([self.splits.test[i][0] for i in range(min(batch, len(self.splits.test)))])
        return x.repeat(max(1, batch // len(x)) + 1, 1, 1, 1)[:batch] if len(x) < batch else x


@functools.lru_cache(maxsize=4)
def _stage_data(dataset: str, data_dir: str, transfer: bool, seed: int) -> StageData:
    splits = load_splits(dataset, data_dir, seed=seed, augment=False, transfer=transfer)
    return StageData(splits)


def root_recipe(ws: Workspace, variant: Variant) -> Recipe | None:
    """The training recipe recorded by the trained root `variant` descends from; None for a root that records
    none (an imported model)."""
    recipe = ws.lineage(variant)[0].config.get("recipe")
    return recipe_from_config(recipe) if recipe else None


def split_seed(ws: Workspace, variant: Variant) -> int:
    """The seed the training files were split into train and validation with for the model `variant` descends
    from: its root's recipe seed (0, what `load_splits` defaults to, for a root without a recipe)."""
    recipe = root_recipe(ws, variant)
    return recipe.seed if recipe else 0


def stage_data(ws: Workspace, variant: Variant, data_dir) -> StageData:
    """The splits of `variant`'s dataset as its root was trained on them: calibration draws only from the root's
    training images and validation is the root's own held-out share, whatever seed the root was trained with."""
    return _stage_data(
        variant.dataset, str(data_dir), bool(variant.config.get("transfer", False)), split_seed(ws, variant)
    )


# -- evaluating any variant ------------------------------------------------------------------------------------
def predict(variant: Variant, data: StageData):
    """(EvalResult over the full test split, logits [N, classes], record) of a variant, computed as the profile's
    accuracy pass on its format's backend computes them (`profile.accuracy.evaluate_variant`; the record says
    on what, so the profile need not compute them again)."""
    logits, labels, record = evaluate_variant(variant, data.splits.test)
    return eval_result(logits, labels, data.info.num_classes), logits, record


def validation_result(ws: Workspace, variant: Variant, data_dir, images: int | None = None):
    """Loss, top-1 and top-5 of a stored variant on the validation split (never the test split): what `search`
    selects on, evaluated as `predict` evaluates the test split.

    Args:
        images: only the first `images` validation images (the split is a seeded random draw from the training
            files, so these are a random sample too); None: all of them.
    Returns:
        a `models.scoring.EvalResult`.
    """
    data = stage_data(ws, variant, data_dir)
    val = data.splits.val
    if images is not None and images < len(val):
        val = Subset(val, range(images))
    logits, labels, _ = evaluate_variant(variant, val)
    return eval_result(logits, labels, data.info.num_classes)


_LOGITS: dict[tuple[str, str], torch.Tensor] = {}


def variant_logits(variant: Variant, data: StageData, data_dir) -> torch.Tensor:
    """Test-split logits of a stored variant (cached per process: parents are evaluated once)."""
    key = (variant.id, str(data_dir))
    if key not in _LOGITS:
        _LOGITS[key] = predict(variant, data)[1]
    return _LOGITS[key]


# -- recorded facts --------------------------------------------------------------------------------------------
def library_versions() -> dict:
    out = {lib: package_version(lib) for lib in _LIBRARIES}
    out["torch"] = torch.__version__  # with its build tag (+cpu, +cu130): which wheel made the variant
    return out


def macs_of(model: nn.Module, example: torch.Tensor) -> int:
    """MACs of one image of `example`'s shape through an eager fp32 module (`models.macs.count_macs`)."""
    return count_macs(model, tuple(example.shape[1:]))["macs"]


def model_keys(parent: Variant) -> dict:
    return {k: parent.config[k] for k in MODEL_KEYS if k in parent.config}


# -- the Stage base class ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageConfig:
    """Base of every stage's options; its fields (all JSON-able) go into the variant's config and id."""

    # Options added after variants were made with the stage: each enters the config and id only when it is not
    # this value, so that those variants keep their ids.
    UNSET: ClassVar[dict[str, object]] = {}

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.UNSET or v != self.UNSET[k]}

    @classmethod
    def from_options(cls, **options):
        """Build from keyword options, ignoring those that are None (unset CLI flags keep the defaults)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k, v in options.items() if v is not None and k not in names)
        if unknown:
            raise UserError(f"unknown option(s) for this stage: {', '.join(unknown)}")
        return cls(**{k: v for k, v in options.items() if v is not None})


class Stage:
    """Variant in, new variant out. Subclasses set `name` and `Config` and implement `run`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StageConfig]] = StageConfig

    def __init__(self, config: StageConfig | None = None, **options):
        self.config = config if config is not None else self.Config.from_options(**options)

    def run(self, ws: Workspace, parent: Variant, data_dir) -> Variant:
        """Make (or find) the variant this stage produces from `parent`."""
        raise NotImplementedError

    def variant_config(self, parent: Variant, data_dir, **extra) -> dict:
        """The child's config: the parent's model keys, this stage's options, the data it is made and evaluated
        with (`data_keys`) and `extra`."""
        return dict(model_keys(parent), **self.config.to_dict(), **data_keys(parent.dataset, data_dir), **extra)

    def make_variant(
        self,
        ws: Workspace,
        parent: Variant,
        data_dir,
        *,
        fmt: str,
        write: Callable[[Path], dict | None],
        config: dict | None = None,
        inherit: tuple[str, ...] = ("params", "macs"),
        accept: Callable[[float, float], dict | None] | None = None,
    ) -> Variant:
        """Create the variant via `write(tmp_dir) -> extra metrics`, then evaluate what was written.

        `inherit` names parent metrics copied when the written artifact cannot count them itself
        (an ONNX file's MACs equal its parent's). `accept(agreement_top1, max_abs_logit_error) -> extra metrics`,
        given, judges the written variant against its parent on the test split before it is stored, and refuses
        it by raising.
        """
        data = stage_data(ws, parent, data_dir)  # missing or unreadable data: one line, before the digest
        config = config if config is not None else self.variant_config(parent, data_dir)

        evaluated: list[torch.Tensor] = []

        def write_and_measure(tmp: Path) -> dict:
            started = time.perf_counter()
            parent_logits = variant_logits(parent, data, data_dir)  # cached: outside the stage's own time
            t0 = time.perf_counter()
            extra = write(tmp) or {}
            seconds = time.perf_counter() - t0
            made = Variant(
                id="(new)",
                parent_id=parent.id,
                model=parent.model,
                dataset=parent.dataset,
                stage=self.name,
                config=config,
                format=fmt,
                files=[],
                size_bytes=0,
                sha256="",
                path=tmp,
            )
            result, logits, evaluated_by = predict(made, data)
            evaluated.append(logits)
            agree = float((logits.argmax(1) == parent_logits.argmax(1)).float().mean()) if len(logits) else 1.0
            error = float((logits - parent_logits).abs().max()) if len(logits) else 0.0
            if accept is not None:
                extra = dict(extra, **(accept(agree, error) or {}))
            facts = parent_facts(parent, data)
            metrics = {k: facts[k] for k in inherit if k in facts}
            # The arithmetic's dtype passes down the lineage (an export of an fp32 model is fp32) unless the
            # stage changes it (quantize records its method's `compute_dtype`).
            metrics["compute_dtype"] = parent.metrics.get("compute_dtype", "float32")
            metrics.update(extra)
            metrics.update(
                accuracy_top1=result.top1,
                accuracy_top5=result.top5,
                test_loss=result.loss,
                test_images=len(logits),
                agreement_top1=agree,
                parent_accuracy_top1=parent.metrics.get("accuracy_top1"),
                accuracy_delta=(result.top1 - parent.metrics["accuracy_top1"])
                if parent.metrics.get("accuracy_top1") is not None
                else None,
                max_abs_logit_error=error,
                predictions_sha256=predictions_digest(logits),
                stage_seconds=seconds,
                # what making it cost in all: the stage, the accuracy passes (and the parent's, when not cached)
                make_seconds=time.perf_counter() - started,
                accuracy_evaluated_by=evaluated_by,
                produced_by=dict(library_versions(), stage=self.name, threads=torch.get_num_threads()),
            )
            return metrics

        variant, _ = ws.create_variant(
            model=parent.model,
            dataset=parent.dataset,
            stage=self.name,
            config=config,
            parent=parent,
            fmt=fmt,
            write=write_and_measure,
        )
        if evaluated:  # the logits of the files just stored: a child stage in this process need not compute them
            _LOGITS[(variant.id, str(data_dir))] = evaluated[-1]
        return variant


def parent_facts(variant: Variant, data: StageData) -> dict:
    """params and MACs of a variant: recorded ones, else counted on its eager module (fp32 torch formats)."""
    facts = {k: variant.metrics.get(k) for k in ("params", "macs")}
    if facts["macs"] is None and variant.format in EAGER_FORMATS:
        module = load_module(variant)
        facts = dict(params=count_params(module), macs=macs_of(module, data.example()))
    return facts


def predictions_digest(logits: torch.Tensor) -> str:
    """A hash of the top-1 predictions over the test split (compared after a reload in a fresh process)."""
    return hashlib.sha256(logits.argmax(1).to(torch.int64).numpy().tobytes()).hexdigest()[:16]


def require_torch_parent(parent: Variant, stage: str) -> None:
    if parent.format not in torch_formats():
        raise UserError(
            f"{stage} needs a PyTorch variant; {parent.id} is {parent.format} "
            f"(choose a trained or pruned variant with --variant)"
        )


def resolve_parent(ws: Workspace, model: str, dataset: str | None, variant_id: str | None, data_dir) -> Variant:
    """The input variant of a command: `variant_id`, else the newest trained variant of (model, dataset) made
    from the data files in `data_dir` (`data_keys`) and, for a user architecture, from its present code.

    Without `dataset`, the one dataset `model` was trained on is used; none or several is a UserError.
    """
    get_model_info(model)  # an unknown name lists the valid ones
    if variant_id:
        v = ws.get_variant(variant_id)
        if v.model != model or (dataset and v.dataset != dataset):
            raise UserError(
                f"variant {v.id} is {v.model} on {v.dataset}, not {model}" + (f" on {dataset}" if dataset else "")
            )
        return v
    if dataset is None:
        datasets = sorted({v.dataset for v in ws.variants(model) if v.stage == "train"})
        if len(datasets) > 1:
            raise UserError(
                f"{model} is trained on several datasets ({', '.join(datasets)}); choose one with --dataset"
            )
        dataset = datasets[0] if datasets else "fashion-mnist"
    trained = [v for v in ws.variants(model, dataset) if v.stage == "train"]
    data = data_keys(dataset, data_dir).get("data_sha256") if trained else None
    fitting = [v for v in trained if v.config.get("data_sha256") == data and not code_changed(v.config)]
    if not fitting:
        why = f" made from the data files in {data_dir} and the present code of {model}" if trained else ""
        raise UserError(
            f"no trained {model} on {dataset}{why} in {ws.root}; "
            f"train it first with: train --model {model} --dataset {dataset}"
        )
    return max(fitting, key=lambda v: v.created_at)
