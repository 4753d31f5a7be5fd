"""`deploybench search`: the fastest variant within an accuracy budget on one backend, found by an Optuna study over
the optimize stages' recipes (`deploybench.search.run_search`)."""

from __future__ import annotations

import argparse
import re
import sys

from deploybench.cli.common import ArgumentParser, add_common, comma_list, dataset_arg, open_workspace, run

_UNITS_S = {"": 1, "s": 1, "m": 60, "h": 3600}


def duration_s(text: str) -> float:
    """argparse type of `--time-limit`: `90`, `90s`, `60m` or `2h`, in seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 60m or 2h, got {text!r}")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="deploybench search",
        description=(
            "Search prune/quantize/export recipes for the fastest variant within an accuracy budget on one backend "
            "(Optuna; measured latency and validation accuracy). Run it again, or with --resume, to continue a study."
        ),
    )
    add_common(p)
    p.add_argument("--model", required=True, help="zoo name, as trained")
    p.add_argument("--dataset", type=dataset_arg, required=True, help="the dataset it was trained on")
    p.add_argument("--backend", required=True, help="target backend, e.g. ort-cpu or torch-compile-cpu")
    p.add_argument("--batch-size", type=int, default=1, help="batch size the latency is measured at (default 1)")
    p.add_argument("--budget", type=float, required=True, help="top-1 points a variant may lose on validation")
    p.add_argument("--trials", type=int, default=24, help="finished trials the study runs to (default 24)")
    p.add_argument(
        "--time-limit",
        type=duration_s,
        help="stop the trials after this long (90s, 60m, 2h): the running one stops and is queued again; "
        "then the summary",
    )
    p.add_argument(
        "--objectives", default="latency,accuracy", help="latency,accuracy[,size] (default latency,accuracy)"
    )
    p.add_argument("--sampler", default="nsga2", help="nsga2 (default) or tpe")
    p.add_argument("--study", help="study name (default: MODEL-DATASET-BACKEND-bN-budgetPTS)")
    p.add_argument(
        "--storage",
        help="database URL of the study (default: sqlite in WORKSPACE/studies.db); "
        "postgresql://... lets workers on several machines share it",
    )
    p.add_argument("--resume", action="store_true", help="continue the study; refuse to start a new one")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument(
        "--no-menu-seeds",
        action="store_true",
        help="a new study starts from the sampler's draws alone, not from optimize all's recipes first",
    )
    p.add_argument("--quick", action="store_true", help="short latency protocol (tests; its numbers are not honest)")
    p.add_argument("--screen-fraction", type=float, help="rung 0: share of one epoch fine-tuned (default 0.2)")
    p.add_argument("--screen-val-images", type=int, help="rung 0: validation images (default 1000)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> int:
        from deploybench.search import (
            Fidelity,
            SearchInterrupted,
            SearchSpec,
            check_spec,
            render_summary,
            run_search,
            summary_path,
        )

        overrides = dict(screen_fraction=args.screen_fraction, screen_val_images=args.screen_val_images)
        spec = SearchSpec(
            model=args.model,
            dataset=args.dataset,
            backend=args.backend,
            batch_size=args.batch_size,
            budget_pts=args.budget,
            trials=args.trials,
            time_limit_s=args.time_limit,
            objectives=tuple(comma_list(args.objectives)),
            sampler=args.sampler,
            study=args.study,
            storage=args.storage,
            resume=args.resume,
            seed=args.seed,
            quick=args.quick,
            menu_seeds=not args.no_menu_seeds,
            fidelity=Fidelity(**{k: v for k, v in overrides.items() if v is not None}),
        )
        check_spec(spec)  # bad input is refused before the workspace is touched
        ws = open_workspace(args)
        try:
            summary = run_search(ws, spec, args.data_dir, log=lambda line: print(line, file=sys.stderr))
        except SearchInterrupted as exc:
            print(f"interrupted: {exc}", file=sys.stderr)
            return 143
        print(render_summary(summary))
        print(
            f"stored: study {summary['study']!r} in {summary['storage']}, summary {summary_path(ws, spec.study_name)}"
            f" ({summary['wall_s']:.0f} s)"
        )
        failed = summary["failed_trials_this_run"]
        if failed:
            print(f"failed: {failed} trial(s) of this run failed (see the lines above)", file=sys.stderr)
        return 1 if failed else 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
