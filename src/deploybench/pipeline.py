"""The main job: train (reusing trained variants) → optimize all → profile run → profile report."""
from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from deploybench.store import Workspace


def run_pipeline(ws: Workspace, dataset: str, models: list[str], *, data_dir: str | Path = "data",
                 epochs: int | None = None, backends: list[str] | None = None, batch_sizes=(1, 64),
                 quick: bool = False, report: str | Path = "reports/index.html", log=print) -> dict:
    """Run every phase for every model under one progress bar; returns a summary with the report's path.

    A phase that fails for one model is reported and the others go on; the report covers what succeeded.
    """
    from deploybench.optimize.pipeline import optimize_all
    from deploybench.profile.runner import profile_variants
    from deploybench.report import build_report
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    phases = ["train", "optimize", "profile"]
    bar = tqdm(total=len(models) * len(phases) + 1, desc="pipeline", unit="step", dynamic_ncols=True)
    summary = dict(models={}, failed=[], seconds={})
    say = bar.write if log is print else log
    for model in models:
        start = time.perf_counter()
        bar.set_postfix_str(f"{model}: train")
        root, _ = train_model(ws, model, dataset, default_recipe(model, epochs=epochs), data_dir=data_dir, log=say)
        bar.update()
        bar.set_postfix_str(f"{model}: optimize all")
        results = optimize_all(ws, root, data_dir, progress=False, log=say)
        summary["failed"] += [f"{model}: {r.name}: {r.message}" for r in results if r.status == "failed"]
        bar.update()
        bar.set_postfix_str(f"{model}: profile")
        profile_variants(ws, ws.variants(model, dataset), backends, batch_sizes=batch_sizes, quick=quick,
                         data_dir=data_dir, log=say)
        bar.update()
        summary["models"][model] = root.metrics.get("accuracy_top1")
        summary["seconds"][model] = time.perf_counter() - start
    bar.set_postfix_str("report")
    summary["report"] = build_report(ws, report)
    bar.update()
    bar.close()
    return summary
