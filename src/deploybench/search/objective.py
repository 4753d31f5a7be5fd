"""One trial: draw a recipe from the space, make its variant through the ordinary stages, measure it on the
validation split and the target backend, and hand Optuna its objectives and its accuracy constraint.

A recipe that fine-tunes is screened first (`fidelity`), unless it is one of `optimize all`'s (a new study runs
those first, `space.menu_seeds`). A recipe drawn again takes over the earlier trial's outcome
(`store.studies.same_params`, which also waits while another worker runs it); measurements are kept in the trials'
user attributes with their variant id, so a variant reached by another recipe is not measured twice either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import optuna
from optuna.trial import TrialState

from deploybench.optimize.base import validation_result
from deploybench.search.fidelity import Fidelity, promotion
from deploybench.search.measure import PairedTimer
from deploybench.search.space import BackendSpace, Dim, TrialRecipe, suggest
from deploybench.store import Variant, Workspace
from deploybench.store.studies import same_params

# Optuna's direction of each objective, and the measurement it reads.
OBJECTIVES = {
    "latency": ("maximize", "speedup"),
    "accuracy": ("maximize", "val_top1"),
    "size": ("minimize", "size_bytes"),
}
CONSTRAINT = "accuracy_drop_over_budget_pts"


@dataclass
class SearchContext:
    """What every trial of one search shares."""

    ws: Workspace
    data_dir: str
    root: Variant  # the trained fp32 variant every recipe starts from
    base: Variant  # the fp32 variant on the backend: the root, or its ONNX export
    space: BackendSpace
    dims: tuple[Dim, ...]
    budget_pts: float
    objectives: tuple[str, ...]
    fidelity: Fidelity
    max_threads: int
    timer: PairedTimer
    base_val_top1: dict[int | None, float] = field(default_factory=dict)  # by validation images (None: all)
    log: Callable[[str], None] = print
    between_steps: Callable[[], None] = lambda: None  # where a held SIGTERM stops a trial

    def base_accuracy(self, images: int | None) -> float:
        """The fp32 variant's top-1 on the first `images` validation images (all for None), evaluated once."""
        if images not in self.base_val_top1:
            self.base_val_top1[images] = validation_result(self.ws, self.base, self.data_dir, images).top1
        return self.base_val_top1[images]


def build(ctx: SearchContext, recipe: TrialRecipe, finetune_fraction: float = 1.0) -> Variant:
    """The recipe's variant, made by its stages from the root (found, not made, when it exists)."""
    variant = ctx.root
    for stage in recipe.stages(ctx.space, finetune_fraction):
        ctx.between_steps()
        variant = stage.run(ctx.ws, variant, ctx.data_dir)
    ctx.between_steps()
    return variant


def _earlier(study: optuna.Study, variant_id: str, threads: int, images: int | None) -> dict | None:
    """A measurement of the same variant, threads and validation images that a trial of `study` recorded."""
    for t in study.get_trials(deepcopy=False):
        for key in ("rung0", "result"):
            m = t.user_attrs.get(key)
            if m and (m["variant_id"], m["threads"], m["val_images"]) == (variant_id, threads, images):
                return dict(m, reused_from_trial=m.get("reused_from_trial", t.number))
    return None


def measure(ctx: SearchContext, study: optuna.Study, variant: Variant, threads: int, images: int | None) -> dict:
    """Validation top-1 on `images` validation images (all for None) and paired latency at `threads`."""
    if (found := _earlier(study, variant.id, threads, images)) is not None:
        return found
    base = ctx.base_accuracy(images)
    top1 = validation_result(ctx.ws, variant, ctx.data_dir, images).top1
    return dict(
        ctx.timer.measure(variant, threads),
        variant_id=variant.id,
        chain=variant.chain,
        threads=threads,
        val_images=images,
        val_top1=top1,
        val_drop_pts=100 * (base - top1),
        size_bytes=variant.size_bytes,
        macs=variant.metrics.get("macs"),
    )


def _rung0_peers(study: optuna.Study, number: int) -> list[dict]:
    """The rung-0 results of the other trials (finished, or running in another worker), one per recipe: a trial
    that took over another's outcome, a failed one and a queued retry add none."""
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return [
        t.user_attrs["rung0"]
        for t in study.get_trials(deepcopy=False, states=live)
        if t.number != number and "rung0" in t.user_attrs and "same_as" not in t.user_attrs
    ]


def _objective_values(result: dict, objectives: tuple[str, ...]) -> list[float]:
    return [float(result[OBJECTIVES[name][1]]) for name in objectives]


def _as_twin(trial: optuna.Trial, twin: optuna.trial.FrozenTrial, ctx: SearchContext) -> list[float]:
    """The outcome of a finished trial of the same recipe, taken over: nothing is made or measured again."""
    trial.set_user_attr("same_as", twin.number)
    for key in ("rung0", "promotion", "result", "variant_id"):
        if key in twin.user_attrs:
            trial.set_user_attr(key, twin.user_attrs[key])
    trial.set_user_attr("seconds", 0.0)
    if twin.state == TrialState.PRUNED or "result" not in twin.user_attrs:
        raise optuna.TrialPruned(f"same recipe as trial {twin.number}, screened out at rung 0")
    result = twin.user_attrs["result"]
    trial.set_constraint(CONSTRAINT, result["val_drop_pts"] - ctx.budget_pts)
    return _objective_values(result, ctx.objectives)


def run_trial(trial: optuna.Trial, ctx: SearchContext) -> list[float]:
    """Optuna's objective: the trial's objective values (`OBJECTIVES`, in `ctx.objectives`' order). Raises
    TrialPruned when the recipe is screened out at rung 0."""
    start_s = time.perf_counter()
    params = suggest(trial, ctx.dims)
    recipe = TrialRecipe.from_params(params, threads=ctx.max_threads)
    trial.set_user_attr("recipe", recipe.describe())
    twin = same_params(trial.study, trial, params)  # waits while another worker runs the same recipe
    if twin is not None:
        return _as_twin(trial, twin, ctx)
    # A recipe of `optimize all`'s menu is not screened: that command makes it at full fidelity anyway (the search
    # compares its winner with the menu), so a rung-0 copy would only add a variant.
    if recipe.screened and "menu_chain" not in trial.user_attrs:
        low = build(ctx, recipe, ctx.fidelity.screen_fraction)
        rung0 = measure(ctx, trial.study, low, recipe.threads, ctx.fidelity.screen_val_images)
        trial.set_user_attr("rung0", rung0)
        ctx.between_steps()
        promoted, why = promotion(rung0, _rung0_peers(trial.study, trial.number), ctx.budget_pts, ctx.fidelity)
        trial.set_user_attr("promotion", why)
        if not promoted:
            trial.set_user_attr("seconds", time.perf_counter() - start_s)
            raise optuna.TrialPruned(why)
    made_after = time.time()
    variant = build(ctx, recipe)
    result = measure(ctx, trial.study, variant, recipe.threads, None)
    ctx.between_steps()
    result["made_now"] = variant.created_at >= made_after
    trial.set_user_attr("result", result)
    trial.set_user_attr("variant_id", variant.id)
    trial.set_user_attr("seconds", time.perf_counter() - start_s)
    trial.set_constraint(CONSTRAINT, result["val_drop_pts"] - ctx.budget_pts)
    return _objective_values(result, ctx.objectives)
