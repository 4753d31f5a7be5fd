"""`train`: list the model zoo, or train one model on one dataset into the workspace."""

from __future__ import annotations

import argparse
import json
import sys

from deploybench.cli.common import (
    ArgumentParser,
    add_checkpoint_option,
    add_common,
    add_training_speed_options,
    budget_minutes,
    dataset_arg,
    open_workspace,
    run,
)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="train",
        description="Train a zoo model and record it in the workspace.",
        epilog="train sweep --model NAME --dataset D --trials N: tune the training recipe "
        "with Optuna (see train sweep --help)",
    )
    add_common(p)
    p.add_argument("--list-models", action="store_true", help="list the zoo (name, family, params) and exit")
    p.add_argument("--json", action="store_true", help="with --list-models: print JSON")
    p.add_argument("--model", help="zoo name or package.module:factory")
    p.add_argument(
        "--dataset", type=dataset_arg, default=None, help="cifar10, cifar100, fashion-mnist or imagefolder:PATH"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adamw"])
    p.add_argument("--schedule", choices=["onecycle", "cosine", "step"])
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--cutout", type=int, help="cutout square side in pixels (0 = off)")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    p.add_argument("--limit-train", type=int, help="train on N training images only (quick runs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default 200)")
    add_training_speed_options(p)
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument(
        "--workers",
        type=int,
        help="data-loading processes for training an image folder (default: 0 on the CPU, 4 on a GPU; "
        "CIFAR and Fashion-MNIST are held in memory and augmented in batches, without workers)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--restart", action="store_true", help="discard an interrupted run and start over")
    p.add_argument("--pretrained", help="resnet18 only: local ImageNet weights for the transfer recipe")
    add_checkpoint_option(p)
    return p


def list_models_table(dataset: str, data_dir: str, as_json: bool) -> str:
    from deploybench.data import dataset_info
    from deploybench.models import count_params, create_model, get_model_info, list_models

    info = dataset_info(dataset, data_dir)
    rows = []
    for name in list_models():
        m = create_model(name, info.num_classes, info.in_channels, info.image_size)
        rows.append(
            dict(
                name=name,
                family=get_model_info(name).family,
                params=count_params(m),
                dataset=dataset,
                description=get_model_info(name).description,
            )
        )
    if as_json:
        return json.dumps(rows, indent=1)
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'model':<{width}}  {'family':<9} {'params':>12}  ({dataset})"]
    lines += [f"{r['name']:<{width}}  {r['family']:<9} {r['params']:>12,}  {r['description']}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sweep"]:  # the one subcommand; `train --model ...` stays as it is
        from deploybench.cli.train_sweep import main as sweep_main

        return sweep_main(argv[1:])
    args = build_parser().parse_args(argv)

    def go():
        from deploybench.errors import UserError

        if args.list_models:
            print(list_models_table(args.dataset or "cifar10", args.data_dir, args.json))
            return 0
        if not args.model or not args.dataset:
            raise UserError("train needs --model and --dataset (or --list-models)")
        from deploybench.train.recipes import default_recipe
        from deploybench.train.run import train_model

        recipe = default_recipe(
            args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            schedule=args.schedule,
            weight_decay=args.weight_decay,
            label_smoothing=args.label_smoothing,
            cutout=args.cutout,
            augment=args.augment,
            limit_train=args.limit_train,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            budget_minutes=budget_minutes(args),
        )
        variant, created = train_model(
            open_workspace(args),
            args.model,
            args.dataset,
            recipe,
            data_dir=args.data_dir,
            resume=args.resume,
            restart=args.restart,
            pretrained=args.pretrained,
            checkpoint=args.checkpoint,
            device=args.device,
            workers=args.workers,
            precision=args.precision,
        )
        m = variant.metrics
        verb = "trained" if created else "already trained (same recipe)"
        print(
            f"{args.model} on {args.dataset}: {verb}, test top-1 {100 * m['accuracy_top1']:.2f}%, "
            f"{m['params']:,} params, variant {variant.id}"
        )
        return 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
