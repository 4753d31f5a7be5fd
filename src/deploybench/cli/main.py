"""`deploybench`: one entry point for every command, plus `pipeline` (the main job)."""
from __future__ import annotations

import argparse
import sys

from deploybench.cli.common import add_common, comma_list, open_workspace, run

COMMANDS = {"train": "deploybench.cli.train", "optimize": "deploybench.cli.optimize",
            "profile": "deploybench.cli.profile_cmd"}


def pipeline(args) -> int:
    """Train each model on the dataset (reusing trained variants) and print its test accuracy."""
    from deploybench.models import list_models
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    ws = open_workspace(args)
    models = list_models() if args.models == "all" else comma_list(args.models)
    rows = []
    for name in models:
        variant, _ = train_model(ws, name, args.dataset, default_recipe(name, epochs=args.epochs),
                                 data_dir=args.data_dir)
        rows.append((name, variant))
    print(f"\n{'model':<18} {'params':>11} {'test top-1':>10} {'s/epoch':>8}  variant")
    for name, v in rows:
        m = v.metrics
        spe = f"{m['seconds_per_epoch']:.0f}" if m.get("seconds_per_epoch") else "-"
        print(f"{name:<18} {m['params']:>11,} {100 * m['accuracy_top1']:>9.2f}% {spe:>8}  {v.id}")
    print(f"workspace: {ws.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        import importlib

        return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    p = argparse.ArgumentParser(prog="deploybench", description="Train, optimize and profile image classifiers.",
                                epilog="other commands: " + ", ".join(f"deploybench {c} ..." for c in COMMANDS))
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("pipeline", help="train -> optimize all -> profile -> report")
    add_common(pp)
    pp.add_argument("--dataset", required=True)
    pp.add_argument("--models", required=True, help="comma-separated model names, or 'all'")
    pp.add_argument("--epochs", type=int, help="override every model's default epochs")
    args = p.parse_args(argv)
    return run(lambda: pipeline(args))


if __name__ == "__main__":
    sys.exit(main())
