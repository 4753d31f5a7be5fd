"""`optimize`: quantize, prune or export a recorded variant, or run every chain (`optimize all`)."""

from __future__ import annotations

import argparse
import sys

from deploybench.cli.common import (
    ArgumentParser,
    add_checkpoint_option,
    add_common,
    checkpoint_variant,
    dataset_arg,
    open_workspace,
    run,
)
from deploybench.optimize.choices import CALIB_METHODS, PRUNE_IMPORTANCES, QUANT_METHODS


def _target(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--model", required=True, help="zoo name (as trained)")
    p.add_argument(
        "--dataset", type=dataset_arg, help="dataset it was trained on (default: the only one it was trained on)"
    )
    p.add_argument("--variant", help="input variant id or unique prefix (default: the trained variant)")
    add_checkpoint_option(p)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="optimize", description="Quantize, prune and export recorded variants.")
    sub = p.add_subparsers(dest="command", required=True, metavar="{quantize,prune,export,all}")

    q = sub.add_parser("quantize", help="int8 / reduced-precision variant")
    _target(q)
    q.add_argument("--method", choices=list(QUANT_METHODS), default="int8-pt2e", help="default: int8-pt2e")
    q.add_argument("--calib-size", type=int, help="training images to calibrate on (default 512)")
    q.add_argument("--calib-method", choices=CALIB_METHODS, help="int8-ort (default minmax)")
    q.add_argument(
        "--reduce-range",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="int8-ort: 7-bit weights (default: on for CPUs without VNNI, where 8-bit saturates)",
    )
    q.add_argument("--qat-epochs", type=int, help="qat: training epochs (default 1)")
    q.add_argument(
        "--qat-minutes",
        type=float,
        help="qat: train for the steps that fit in this many minutes (timed on the first steps; at most "
        "--qat-epochs epochs); recorded in the variant's id",
    )
    q.add_argument(
        "--max-drop",
        type=float,
        help="int8-nncf-ac: largest allowed top-1 drop on validation images, as a fraction (default 0.01 = 1 point)",
    )
    q.add_argument(
        "--val-size",
        type=int,
        help="int8-nncf-ac, --float-layers sensitive:K: validation images accuracy is measured on (default 1000)",
    )
    q.add_argument(
        "--float-layers",
        metavar="SPEC",
        help="int8-pt2e, int8-ort: layers left in float, comma-separated: depthwise (depthwise convolutions), "
        "se (squeeze-excitation blocks), sensitive:K (the K layers whose int8 alone loses the most validation "
        "top-1, measured)",
    )

    pr = sub.add_parser("prune", help="structured channel pruning + fine-tuning")
    _target(pr)
    pr.add_argument("--ratio", type=float, required=True, help="share of channels removed, e.g. 0.5")
    pr.add_argument("--importance", choices=PRUNE_IMPORTANCES, help="default: magnitude (group L2)")
    pr.add_argument(
        "--global",
        dest="global_pruning",
        action="store_const",
        const=True,
        help="rank channels across all layers (default: the same ratio per layer)",
    )
    pr.add_argument("--iterative-steps", type=int, help="prune in K steps (default 1)")
    pr.add_argument(
        "--round-to",
        type=int,
        help="keep each pruned layer's channel count a multiple of N (unaligned counts can run slower in int8 "
        "and bf16 kernels; default: any count)",
    )
    pr.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs after pruning (default 2)")
    pr.add_argument(
        "--finetune-minutes",
        type=float,
        help="fine-tune for the steps that fit in this many minutes (timed on the first steps; at most "
        "--finetune-epochs epochs); recorded in the variant's id",
    )
    pr.add_argument(
        "--finetune-lr",
        type=float,
        help="peak learning rate of the fine-tuning's cosine schedule (default: 1/10 of the training recipe's)",
    )
    pr.add_argument(
        "--distill",
        action="store_const",
        const=True,
        help="distill from the unpruned parent while fine-tuning (KL at T=4 + CE)",
    )

    e = sub.add_parser("export", help="ONNX export with parity check")
    _target(e)
    e.add_argument("--opset", type=int, help="ONNX opset (default 18)")

    a = sub.add_parser("all", help="every stage and chain; a summary table at the end")
    _target(a)
    a.add_argument("--ratio", type=float, default=0.5, help="pruning ratio of the prune chains (default 0.5)")
    a.add_argument("--finetune-epochs", type=int, default=2)
    a.add_argument("--finetune-minutes", type=float, help="the prune chains' fine-tuning: at most this many minutes")
    a.add_argument("--qat-minutes", type=float, help="the qat chain's training: at most this many minutes")
    a.add_argument("--calib-size", type=int, default=512)
    a.add_argument("--qat", action="store_true", help="run QAT even when int8-pt2e loses <= 1 point")
    return p


def _describe(v) -> str:
    m = v.metrics
    parts = [
        f"variant {v.id} ({v.chain}, {v.format})",
        f"top-1 {100 * m['accuracy_top1']:.2f}%",
        f"agreement {100 * m['agreement_top1']:.2f}%",
        f"{v.size_bytes:,} bytes",
    ]
    if m.get("params") is not None:
        parts.append(f"{m['params']:,} params")
    if m.get("macs_before") and m.get("macs"):
        parts.append(f"MACs {m['macs_before']:,} → {m['macs']:,}")
    if m.get("val_drop") is not None:
        parts.append(
            f"validation top-1 {100 * m['val_top1_int8']:.2f}% (drop {100 * m['val_drop']:.2f} points, "
            f"max {100 * m['max_drop']:.2f})"
        )
    if "parity_max_abs_logit_error" in m:
        parts.append(f"max |Δlogit| {m['parity_max_abs_logit_error']:.2e}")
    line = ", ".join(parts)
    return line + (f"\nnote: {m['note']}" if m.get("note") else "")


# Options that only some methods use: given with another method, they are refused rather than ignored.
_METHOD_OPTIONS = {"--max-drop": "max_drop", "--val-size": "val_size", "--float-layers": "float_layers"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "quantize":
        for flag, option in _METHOD_OPTIONS.items():
            if getattr(args, option) is not None and option not in QUANT_METHODS[args.method].options:
                users = [m.name for m in QUANT_METHODS.values() if option in m.options]
                parser.error(f"quantize: {flag} is an option of --method {' / '.join(users)}, not of {args.method}")

    def go():
        from deploybench.optimize.base import get_stage, resolve_parent

        ws = open_workspace(args)
        parent = (
            checkpoint_variant(ws, args)
            if args.checkpoint
            else resolve_parent(ws, args.model, args.dataset, args.variant, args.data_dir)
        )
        if args.command == "all":
            from deploybench.optimize.pipeline import optimize_all, summary_table

            results = optimize_all(
                ws,
                parent,
                args.data_dir,
                ratio=args.ratio,
                finetune_epochs=args.finetune_epochs,
                finetune_minutes=args.finetune_minutes,
                qat_minutes=args.qat_minutes,
                calib_size=args.calib_size,
                force_qat=args.qat,
                log=lambda msg: print(msg, file=sys.stderr),
            )
            print(summary_table(parent, results))
            return 1 if any(r.status == "failed" for r in results) else 0
        if args.command == "quantize":
            stage = get_stage("quantize")(
                method=args.method,
                calib_size=args.calib_size,
                calib_method=args.calib_method,
                reduce_range=args.reduce_range,
                qat_epochs=args.qat_epochs,
                qat_minutes=args.qat_minutes,
                max_drop=args.max_drop,
                val_size=args.val_size,
                float_layers=args.float_layers,
            )
        elif args.command == "prune":
            stage = get_stage("prune")(
                ratio=args.ratio,
                importance=args.importance,
                global_pruning=args.global_pruning,
                iterative_steps=args.iterative_steps,
                round_to=args.round_to,
                finetune_epochs=args.finetune_epochs,
                finetune_minutes=args.finetune_minutes,
                finetune_lr=args.finetune_lr,
                distill=args.distill,
            )
        else:
            stage = get_stage("export")(opset=args.opset)
        print(_describe(stage.run(ws, parent, args.data_dir)))
        return 0

    return run(go)


if __name__ == "__main__":
    sys.exit(main())
