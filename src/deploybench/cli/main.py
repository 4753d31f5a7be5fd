"""`deploybench`: one entry point for every command, plus `pipeline` (the main job)."""

from __future__ import annotations

import argparse
import sys

from deploybench.cli.common import (
    ArgumentParser,
    add_common,
    add_training_speed_options,
    budget_minutes,
    comma_list,
    dataset_arg,
    int_list,
    open_workspace,
    run,
)

COMMANDS = {
    "train": "deploybench.cli.train",
    "optimize": "deploybench.cli.optimize",
    "profile": "deploybench.cli.profile_cmd",
    "search": "deploybench.cli.search",
    "app": "deploybench.cli.app",
    "bundle": "deploybench.cli.bundle",
    "import": "deploybench.cli.import_cmd",
}


def pipeline(args) -> int:
    """Train -> optimize all -> profile -> report for every model; prints the compare table and the report path."""
    from deploybench.data import dataset_info
    from deploybench.models import get_model_info, list_models
    from deploybench.pipeline import phase_minutes, run_pipeline
    from deploybench.profile.backends import get_backend
    from deploybench.profile.compare import compare_rows, render
    from deploybench.profile.runner import checked_batch_sizes
    from deploybench.store.atomic import check_file_target
    from deploybench.train.recipes import default_recipe

    models = list_models() if args.models == "all" else comma_list(args.models)
    budget = budget_minutes(args)
    for name in models:  # unknown names and bad options fail before any work starts
        get_model_info(name)
        default_recipe(name, epochs=args.epochs, budget_minutes=budget)
    dataset_info(args.dataset, args.data_dir)
    for name in comma_list(args.backends or ""):
        get_backend(name)
    checked_batch_sizes(args.batch_sizes)
    check_file_target(args.out, writable=True)
    ws = open_workspace(args)
    summary = run_pipeline(
        ws,
        args.dataset,
        models,
        data_dir=args.data_dir,
        epochs=args.epochs,
        budget_minutes=budget,
        precision=args.precision,
        backends=comma_list(args.backends) if args.backends else None,
        batch_sizes=args.batch_sizes,
        quick=args.quick,
        report=args.out,
    )
    print(render(compare_rows(ws, models=models, dataset=args.dataset, include_skipped=False), "table"))
    for line in summary["failed"]:
        print(f"failed: {line}")
    totals: dict[str, float] = {}
    for name, seconds in summary["seconds"].items():
        print(f"{name}: {seconds / 60:.1f} min ({phase_minutes(summary['phases'][name])})")
        for phase, s in summary["phases"][name].items():
            totals[phase] = totals.get(phase, 0.0) + s
    whole = sum(summary["seconds"].values()) + summary["report_seconds"]
    phases = phase_minutes({**totals, "report": summary["report_seconds"]})
    print(f"all {len(summary['seconds'])} models: {whole / 60:.1f} min ({phases})")
    print(f"report: {summary['report']}")
    return 1 if summary["failed"] else 0  # like `optimize all`: the report covers what succeeded


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="deploybench",
        description="Train, optimize and profile image classifiers.",
        epilog="other commands: " + ", ".join(f"deploybench {c} ..." for c in COMMANDS),
    )
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("pipeline", help="train -> optimize all -> profile -> report")
    add_common(pp)
    pp.add_argument("--dataset", type=dataset_arg, required=True)
    pp.add_argument("--models", required=True, help="comma-separated model names, or 'all'")
    pp.add_argument("--epochs", type=int, help="override every model's default epochs")
    add_training_speed_options(pp)
    pp.add_argument("--backends", help="comma-separated profile backends (default: every available one)")
    pp.add_argument("--batch-sizes", type=int_list, default=[1, 64], help="comma-separated (default 1,64)")
    pp.add_argument("--quick", action="store_true", help="short latency protocol (tests)")
    pp.add_argument("--out", default="reports/index.html", help="where to write the report")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        import importlib

        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    args = build_parser().parse_args(argv)
    return run(lambda: pipeline(args))


if __name__ == "__main__":
    sys.exit(main())
