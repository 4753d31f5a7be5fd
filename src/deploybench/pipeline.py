"""The main job: train (reusing trained variants) → optimize all → profile run → profile report.

Run again on the same workspace, it redoes nothing that is done: trained and optimized variants are found by
their content-addressed ids, and measurements taken by the same committed code with the same libraries,
hardware, threads and protocol are kept, so an interrupted `--models all` goes on where it stopped."""

from __future__ import annotations

import time
from pathlib import Path

from deploybench.data import canonical_dataset
from deploybench.errors import WORKSPACE_ERRNOS, DamagedStore, failure_line, traceback_tail
from deploybench.optimize.pipeline import optimize_all
from deploybench.platform.progress import progress
from deploybench.profile.runner import DEFAULT_BATCH_SIZES, profile_variants
from deploybench.report import build_report
from deploybench.store import Workspace
from deploybench.train.engine import TrainingInterrupted
from deploybench.train.recipes import default_recipe
from deploybench.train.run import train_model

PHASES = ("train", "optimize", "profile")
# With a time budget, pruning's fine-tune and QAT each get this share of the training's: both start from trained
# weights, and unbounded (2 epochs of fine-tune, 1 of fake-quantized training in fp32) either takes longer than the
# training itself for a model that trains under an epoch in the budget.
RETRAIN_SHARE = 0.5


def phase_minutes(seconds: dict[str, float]) -> str:
    """`train 10.8, optimize 3.5, profile 9.5`: the minutes per phase, as the pipeline and its CLI print them."""
    return ", ".join(f"{phase} {s / 60:.1f}" for phase, s in seconds.items())


def _run_model(
    ws: Workspace,
    model: str,
    dataset: str,
    summary: dict,
    bar,
    *,
    data_dir,
    epochs,
    budget_minutes,
    precision,
    backends,
    batch_sizes,
    quick: bool,
    say,
) -> str | None:
    """Train, optimize and profile one model, counting each phase on `bar` and adding to `summary` (the test
    top-1 under "models", each phase's seconds under "phases").

        Returns:
            the phase that failed (its steps are counted as done), or None.
        Raises:
            TrainingInterrupted, or an OSError of a full or read-only workspace: they stop the whole run.
    """
    phase, times = "train", summary["phases"].setdefault(model, {})
    started = time.perf_counter()

    def begin(name: str, command: str) -> None:
        nonlocal phase, started
        times[phase] = time.perf_counter() - started
        bar.update()
        phase, started = name, time.perf_counter()
        bar.milestone(f"{model}: {command}")  # the command a user would type to run this phase alone

    try:
        bar.milestone(f"{model}: train")
        recipe = default_recipe(model, epochs=epochs, budget_minutes=budget_minutes)
        root, _ = train_model(
            ws, model, dataset, recipe, data_dir=data_dir, resume=None, precision=precision, log=say
        )  # an interrupted run of an earlier pipeline goes on
        summary["models"][model] = root.metrics.get("accuracy_top1")
        begin("optimize", "optimize all")
        retrain_minutes = budget_minutes * RETRAIN_SHARE if budget_minutes else None
        results = optimize_all(
            ws,
            root,
            data_dir,
            finetune_minutes=retrain_minutes,
            qat_minutes=retrain_minutes,
            log=lambda line: say(f"{model}: {line}"),
        )
        summary["failed"] += [f"{model}: {r.name}: {r.message}" for r in results if r.status == "failed"]
        begin("profile", "profile")
        profile_variants(
            ws,
            ws.variants(model, dataset),
            backends,
            batch_sizes=batch_sizes,
            quick=quick,
            data_dir=data_dir,
            reuse=True,
            log=say,
        )  # a rerun measures only what is new
        times[phase] = time.perf_counter() - started
        bar.update()
    except Exception as exc:  # noqa: BLE001  one model that fails must not stop the others
        if isinstance(exc, (TrainingInterrupted, DamagedStore)) or getattr(exc, "errno", None) in WORKSPACE_ERRNOS:
            raise  # SIGTERM (checkpointed, resumable), a damaged store or a full/read-only disk: stop the whole run
        times[phase] = time.perf_counter() - started
        summary["failed"].append(f"{model}: {phase}: {failure_line(exc)}")
        say(f"{model}: {phase} failed: {failure_line(exc)}" + traceback_tail(exc))
        bar.update(len(PHASES) - PHASES.index(phase))  # the phases it will not run
        return phase
    return None


def run_pipeline(
    ws: Workspace,
    dataset: str,
    models: list[str],
    *,
    data_dir: str | Path = "data",
    epochs: int | None = None,
    budget_minutes: float | None = None,
    precision: str = "auto",
    backends: list[str] | None = None,
    batch_sizes=DEFAULT_BATCH_SIZES,
    quick: bool = False,
    report: str | Path = "reports/index.html",
    log=print,
) -> dict:
    """Run every phase for every model under one progress display; returns a summary with the report's path.

    A model whose training, chains or profiling fail is reported in `summary["failed"]` and the other models
    go on; the report covers what succeeded. A SIGTERM during training (checkpointed; the next pipeline
    resumes it) and a full or read-only workspace stop the run. On a terminal a bar shows the phases; in a log
    each phase starts with one line.
    """
    dataset = canonical_dataset(dataset)
    bar = progress(total=len(models) * len(PHASES) + 1, desc="pipeline", log=log, unit="step", dynamic_ncols=True)
    summary = dict(models={}, failed=[], seconds={}, phases={})
    say = bar.write if log is print else log
    for n, model in enumerate(models):
        start_s = time.perf_counter()
        failed = _run_model(
            ws,
            model,
            dataset,
            summary,
            bar,
            data_dir=data_dir,
            epochs=epochs,
            budget_minutes=budget_minutes,
            precision=precision,
            backends=backends,
            batch_sizes=batch_sizes,
            quick=quick,
            say=say,
        )
        summary["seconds"][model] = time.perf_counter() - start_s
        ended = f"stopped at {failed} after" if failed else "finished in"
        phases = phase_minutes(summary["phases"][model])
        say(f"{model} {ended} {summary['seconds'][model] / 60:.1f} min ({phases}; {n + 1} of {len(models)} models)")
    bar.milestone("report")
    start_s = time.perf_counter()
    summary["report"] = build_report(ws, report)
    summary["report_seconds"] = time.perf_counter() - start_s
    bar.update()
    bar.close()
    return summary
