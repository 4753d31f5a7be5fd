"""`train sweep`: tune a model's training recipe with Optuna (validation top-1), alone or with other workers."""

from __future__ import annotations

import argparse
import sys

from deploybench.cli.common import ArgumentParser, add_common, dataset_arg, open_workspace, run


def build_parser() -> argparse.ArgumentParser:
    from deploybench.store.studies import HEARTBEAT_S
    from deploybench.train.sweep import PRUNERS

    p = ArgumentParser(
        prog="train sweep",
        description="Search training recipes (learning rate, weight decay, label smoothing, batch size, epochs, "
        "schedule) for the best validation top-1. Every trial is an ordinary training run; the first "
        "is the default recipe. Several workers may run one study: start each with the same --storage "
        "and --study.",
    )
    add_common(p)
    p.add_argument("--model", required=True, help="zoo name or package.module:factory")
    p.add_argument(
        "--dataset", type=dataset_arg, required=True, help="cifar10, cifar100, fashion-mnist or imagefolder:PATH"
    )
    p.add_argument(
        "--trials", type=int, required=True, help="finished trials the study should hold (all workers together)"
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (default: studies.db in the workspace)",
    )
    p.add_argument(
        "--study",
        metavar="NAME",
        help="study to create or join (default: train-sweep-MODEL-DATASET, which needs --resume once it has trials)",
    )
    p.add_argument("--resume", action="store_true", help="continue the study (an error if it does not exist)")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="how poor trials are stopped (default median)")
    p.add_argument("--limit-train", type=int, help="train on N training images only (quick runs; not searched)")
    p.add_argument("--seed", type=int, help="initial weights and data order of every trial (not searched)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--workers", type=int, help="data-loading processes per training run")
    p.add_argument(
        "--heartbeat-seconds",
        type=int,
        default=HEARTBEAT_S,
        help=f"a trial whose worker has been silent for twice this is failed and run again by another "
        f"worker; the same for every worker of a study (default {HEARTBEAT_S})",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go():
        import optuna

        from deploybench.train.recipes import default_recipe
        from deploybench.train.sweep import report_lines, sweep

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the sweep prints its own lines, failures included
        base = default_recipe(args.model, limit_train=args.limit_train, seed=args.seed)
        result = sweep(
            open_workspace(args),
            args.model,
            args.dataset,
            args.trials,
            storage=args.storage,
            study_name=args.study,
            resume=args.resume,
            pruner=args.pruner,
            base=base,
            data_dir=args.data_dir,
            device=args.device,
            workers=args.workers,
            heartbeat_s=args.heartbeat_seconds,
            log=lambda line: print(line, flush=True),
        )
        for line in report_lines(result):
            print(line)
        return 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
