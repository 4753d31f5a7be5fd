"""`train sweep`: an Optuna study of training recipes for one model on one dataset, maximizing validation top-1.

Every trial is an ordinary training run (`train_model`), so its variant is content-addressed: a recipe that was
trained before, by any command or worker, costs nothing. The first trial of a new study is the model's default
recipe, the baseline the others are read against. Poor trials are pruned at epoch ends (median or Hyperband);
a pruned run is recorded as interrupted, never as a variant. Studies live in `--storage` (`store.studies`):
several workers on one study each run trials until the study has `--trials` finished ones.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from deploybench.data import canonical_dataset, load_splits
from deploybench.errors import UserError
from deploybench.platform import fingerprint
from deploybench.store import Variant, Workspace
from deploybench.store.studies import (
    FINISHED,
    HEARTBEAT_S,
    check_fingerprint,
    display_url,
    open_storage,
    open_study,
    run_trials,
    same_params,
    worker_name,
)
from deploybench.train.engine import TrainingInterrupted, data_path
from deploybench.train.recipes import RECIPE_KEYS, Recipe, default_recipe
from deploybench.train.run import train_model, training_device

PRUNERS = ("median", "hyperband")
PROGRESS_STEPS = 100  # trials report at % of their schedule done (see `_EpochReporter`)


@dataclass(frozen=True)
class Dim:
    """One searched recipe field. `kind`: "log" (log-uniform float), "float", "int" or "choice". With `of_base`,
    `low` and `high` are multiples of the base recipe's value (rounded up and down for ints)."""

    field: str
    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()
    of_base: bool = False


# The searched recipe. Epochs stay at or under the default's, so no trial takes longer than the baseline.
SEARCH_SPACE: tuple[Dim, ...] = (
    Dim("lr", "log", 0.01, 0.4),  # peak (OneCycle) or initial (cosine, step)
    Dim("weight_decay", "log", 1e-5, 3e-3),
    Dim("label_smoothing", "float", 0.0, 0.2),
    Dim("batch_size", "choice", choices=(64, 128, 256)),
    Dim("epochs", "int", 0.5, 1.0, of_base=True),
    Dim("schedule", "choice", choices=("onecycle", "cosine", "step")),
)


def _bounds(dim: Dim, base: Recipe) -> tuple[float, float]:
    if not dim.of_base:
        return dim.low, dim.high
    value = getattr(base, dim.field)
    if dim.kind == "int":
        return max(1, math.ceil(dim.low * value)), max(1, math.floor(dim.high * value))
    return dim.low * value, dim.high * value


def check_space(space: tuple[Dim, ...], base: Recipe) -> None:
    """Refuse a space naming a field the recipe lacks, an unknown kind or empty bounds (a library mistake)."""
    for dim in space:
        if dim.field not in RECIPE_KEYS:
            raise UserError(f"search space: {dim.field!r} is not a recipe field")
        if dim.kind == "choice":
            if not dim.choices:
                raise UserError(f"search space: {dim.field} has no choices")
        elif dim.kind in ("log", "float", "int"):
            low, high = _bounds(dim, base)
            if not low <= high or (dim.kind == "log" and low <= 0):
                raise UserError(f"search space: {dim.field} has bounds [{low}, {high}]")
        else:
            raise UserError(f"search space: {dim.field} has unknown kind {dim.kind!r}")


def suggest(trial: optuna.Trial, space: tuple[Dim, ...], base: Recipe) -> dict:
    """The trial's values of the searched fields."""
    params = {}
    for dim in space:
        if dim.kind == "choice":
            params[dim.field] = trial.suggest_categorical(dim.field, list(dim.choices))
            continue
        low, high = _bounds(dim, base)
        if dim.kind == "int":
            params[dim.field] = trial.suggest_int(dim.field, int(low), int(high))
        else:
            params[dim.field] = trial.suggest_float(dim.field, low, high, log=dim.kind == "log")
    return params


def base_params(space: tuple[Dim, ...], base: Recipe) -> dict:
    """The base recipe's values of the searched fields that lie in the space (the rest is sampled)."""
    out = {}
    for dim in space:
        value = getattr(base, dim.field)
        if dim.kind == "choice":
            inside = value in dim.choices
        else:
            low, high = _bounds(dim, base)
            inside = low <= value <= high
        if inside:
            out[dim.field] = value
    return out


def make_pruner(name: str, max_steps: int = PROGRESS_STEPS) -> optuna.pruners.BasePruner:
    """`--pruner`: median (a trial below the median of finished trials at the same point is stopped, after 2
    finished trials) or hyperband (successive halving over brackets, from 1% of a schedule to all of it)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_steps, reduction_factor=3)
    raise UserError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")


def train_command(
    model: str,
    dataset: str,
    recipe: Recipe,
    *,
    data_dir: str | Path = "data",
    device: str | None = None,
    workers: int | None = None,
) -> str:
    """The `train` command line that trains `recipe` (the same variant id: it is found, not trained again)."""
    default = default_recipe(model)
    words = ["train", "--model", model, "--dataset", dataset]
    for f in fields(Recipe):
        value = getattr(recipe, f.name)
        if value == getattr(default, f.name):
            continue
        if isinstance(value, bool):  # the CLI can only switch these off
            words.append(f"--no-{f.name.replace('_', '-')}")
        else:
            words += [f"--{f.name.replace('_', '-')}", repr(value) if isinstance(value, float) else str(value)]
    if str(data_dir) != "data":
        words += ["--data-dir", str(data_dir)]
    if device is not None:
        words += ["--device", device]
    if workers is not None:
        words += ["--workers", str(workers)]
    return shlex.join(words)


# The line `train_model` logs at each epoch end; the sweep reads its validation top-1 from it.
_EPOCH_LINE = re.compile(r"^epoch (\d+): .*\bval top-1 ([0-9.]+)%")


class _EpochReporter:
    """`log` for `train_model`: passes every line on, and at each epoch end reports the validation top-1 to the
    trial at the share of the schedule done (in %: trials of different lengths are compared at the same point of
    their learning-rate schedule, not at the same epoch) and stops the run when the pruner says so. Never on the
    last epoch: the run is done then, and its variant is worth keeping."""

    def __init__(self, trial: optuna.Trial, epochs: int, log):
        self.trial, self.epochs, self.log = trial, epochs, log
        self.trained_epochs = 0

    def __call__(self, line: str) -> None:
        self.log(f"  trial {self.trial.number}: {line}")
        match = _EPOCH_LINE.match(line)
        if not match:
            return
        epoch, val_top1 = int(match[1]), float(match[2]) / 100
        self.trained_epochs += 1
        self.trial.report(val_top1, round(PROGRESS_STEPS * epoch / self.epochs))
        if epoch < self.epochs and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch} of {self.epochs}: validation top-1 {100 * val_top1:.2f}%"
            )


@dataclass
class SweepResult:
    """What a sweep found: the study, its best trial, recipe and variant, and the command that trains it."""

    study: optuna.Study
    storage: str  # the storage, password hidden
    ran: int  # trials this worker ran
    best: FrozenTrial | None  # None while no trial has completed
    recipe: Recipe | None
    variant: Variant | None  # None also when the best was trained in another worker's workspace
    command: str | None
    default: FrozenTrial | None  # the trial of the default recipe, when it has completed


def _objective(
    ws: Workspace,
    study: optuna.Study,
    model: str,
    dataset: str,
    base: Recipe,
    space: tuple[Dim, ...],
    *,
    data_dir,
    device,
    workers,
    log,
):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_name())
        params = suggest(trial, space, base)
        twin = same_params(study, trial, params)
        if twin is not None and twin.state == TrialState.PRUNED:  # its run was stopped: stop this one as early
            for step, value in twin.intermediate_values.items():
                trial.report(value, step)
            trial.set_user_attr("same_as", twin.number)
            trial.set_user_attr("trained_epochs", 0)
            log(f"trial {trial.number}: same recipe as pruned trial {twin.number}")
            raise optuna.TrialPruned()
        log(f"trial {trial.number}: {json.dumps(params)}")
        recipe = replace(base, **params)
        reporter = _EpochReporter(trial, recipe.epochs, log)
        try:
            variant, created = train_model(
                ws, model, dataset, recipe, data_dir=data_dir, resume=None, device=device, workers=workers, log=reporter
            )
        except optuna.TrialPruned as stop:
            log(f"trial {trial.number}: {stop}")
            raise
        except (TrainingInterrupted, KeyboardInterrupt):
            # The next worker resumes the run; the retry keeps what the trial was (the default recipe, ...).
            study.enqueue_trial(params, user_attrs={**trial.user_attrs, "retry_of": trial.number})
            raise
        finally:
            trial.set_user_attr("trained_epochs", reporter.trained_epochs)
        trial.set_user_attr("variant_id", variant.id)
        value = variant.metrics["best_val_top1"]
        log(
            f"trial {trial.number}: validation top-1 {100 * value:.2f}%"
            f"{'' if created else ' (same recipe trained before)'}, variant {variant.id}"
        )
        return value

    return objective


def _summarize(
    ws: Workspace,
    study: optuna.Study,
    model: str,
    dataset: str,
    base: Recipe,
    storage: str,
    ran: int,
    *,
    data_dir,
    device,
    workers,
) -> SweepResult:
    """The best trial, its recipe, variant and command; stored on the study (user attrs) for every reader."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    default = next((t for t in trials if t.user_attrs.get("default_recipe")), None)
    if not trials:
        return SweepResult(study, storage, ran, None, None, None, None, default)
    best = max(trials, key=lambda t: (t.value, -t.number))
    recipe = replace(base, **best.params)
    command = train_command(model, dataset, recipe, data_dir=data_dir, device=device, workers=workers)
    variant = ws.find_variant(best.user_attrs["variant_id"])  # None when a worker of another workspace trained it
    for key, value in (
        ("best_trial", best.number),
        ("best_val_top1", best.value),
        ("best_recipe", recipe.to_dict()),
        ("best_variant_id", best.user_attrs["variant_id"]),
        ("best_command", command),
    ):
        study.set_user_attr(key, value)
    return SweepResult(study, storage, ran, best, recipe, variant, command, default)


def sweep(
    ws: Workspace,
    model: str,
    dataset: str,
    n_trials: int,
    *,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    pruner: str | optuna.pruners.BasePruner = "median",
    space: tuple[Dim, ...] = SEARCH_SPACE,
    base: Recipe | None = None,
    data_dir: str | Path = "data",
    device: str | None = None,
    workers: int | None = None,
    heartbeat_s: int = HEARTBEAT_S,
    log=print,
) -> SweepResult:
    """Tune `model`'s training recipe on `dataset` until the study has `n_trials` finished trials.

    Args: storage: `--storage URL` (None: the workspace's studies.db); study_name: `--study` (default
    `train-sweep-MODEL-DATASET`); naming one joins or continues it, as `resume` does; pruner: "median",
    "hyperband" or a pruner; space: the searched fields (default SEARCH_SPACE); base: the recipe the search
    starts from and whose other fields every trial keeps (default: the model's); heartbeat_s: see
    `store.studies.open_storage`. Returns the SweepResult; bad input raises UserError before any work.
    """
    if n_trials < 1:
        raise UserError(f"--trials must be 1 or more, got {n_trials}")
    dataset = canonical_dataset(dataset)
    base = base or default_recipe(model)
    check_space(space, base)
    if heartbeat_s < 1:
        raise UserError(f"--heartbeat-seconds must be 1 or more, got {heartbeat_s}")
    pruner = make_pruner(pruner) if isinstance(pruner, str) else pruner
    data_path(dataset, training_device(device), workers)  # bad --workers: refused before any trial
    load_splits(dataset, data_dir, seed=base.seed, augment=False)  # missing or bad data: refused before any trial
    store = open_storage(storage, ws.root, heartbeat_s=heartbeat_s, must_exist=resume)
    searched = {d.field for d in space}
    target = dict(
        command="train sweep",
        model=model,
        dataset=dataset,
        heartbeat_s=heartbeat_s,
        space=[asdict(d) for d in space],
        base={k: v for k, v in base.to_dict().items() if k not in searched},
    )
    with warnings.catch_warnings():  # constant_liar is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A third of the trials (2 to 10) sampled at random before TPE models the rest; with several workers, the
        # constant liar keeps TPE from proposing the recipes other workers are running.
        sampler = optuna.samplers.TPESampler(n_startup_trials=max(2, min(10, n_trials // 3)), constant_liar=True)
    study, created = open_study(
        store,
        study_name or f"train-sweep-{model}-{dataset}",
        directions=["maximize"],
        target=target,
        resume=resume,
        named=study_name is not None,
        sampler=sampler,
        pruner=pruner,
    )
    if created:
        study.enqueue_trial(base_params(space, base), user_attrs={"default_recipe": True})
    check_fingerprint(study, fingerprint(), measures_latency=False)
    shown = display_url(store.url)
    log(f"study {study.study_name} in {shown}: {_count(study)}; running until {n_trials} have finished")
    objective = _objective(
        ws, study, model, dataset, base, space, data_dir=data_dir, device=device, workers=workers, log=log
    )
    ran = run_trials(study, objective, n_trials)
    return _summarize(ws, study, model, dataset, base, shown, ran, data_dir=data_dir, device=device, workers=workers)


def _count(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = {
        s: sum(t.state == s for t in trials)
        for s in (*FINISHED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    }
    return f"{len(trials)} trial(s): " + ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items())


def report_lines(result: SweepResult) -> list[str]:
    """The sweep's outcome for people: the trials, the best recipe against the default, and how to use it."""
    lines = [f"study {result.study.study_name}: {_count(result.study)}; this worker ran {result.ran}"]
    if result.best is None:
        return lines + ["no trial has completed yet"]
    best, v = result.best, result.variant
    tested = (
        f"test top-1 {100 * v.metrics['accuracy_top1']:.2f}%, variant {v.id}"
        if v
        else f"variant {best.user_attrs['variant_id']} (in the workspace of worker {best.user_attrs['worker']})"
    )
    baseline = (
        f"default recipe (trial {result.default.number}): {100 * result.default.value:.2f}%"
        if result.default
        else "default recipe: not completed in this study"
    )
    lines += [
        f"best: trial {best.number}, validation top-1 {100 * best.value:.2f}% ({baseline}); {tested}",
        "recipe: " + " ".join(f"{k}={result.recipe.to_dict()[k]}" for k in best.params),
        f"use it: {result.command}",
    ]
    return lines
