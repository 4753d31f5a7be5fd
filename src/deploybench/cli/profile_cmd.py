"""`profile run | compare | results | report`: measure variants into the workspace, compare them, build the report."""

from __future__ import annotations

import argparse
import shlex
import sys

from deploybench.cli.common import (
    ArgumentParser,
    add_checkpoint_option,
    add_common,
    checkpoint_variant,
    comma_list,
    dataset_arg,
    int_list,
    open_workspace,
    run,
)
from deploybench.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="profile", description="Profile variants on every backend and compare them.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure variants (latency, memory, accuracy, %% of peak) into the workspace")
    add_common(r)
    r.add_argument("--model", default="all", help="model name, or all (default)")
    r.add_argument("--dataset", type=dataset_arg, help="only variants of this dataset")
    r.add_argument("--variant", action="append", help="only this variant id (repeatable; prefixes accepted)")
    add_checkpoint_option(r)
    r.add_argument("--backends", type=comma_list, help="comma-separated backends (default: every available one)")
    r.add_argument("--batch-sizes", type=int_list, default=[1, 64], help="comma-separated (default 1,64)")
    r.add_argument("--threads", type=int, help="CPU threads (default: all physical cores)")
    r.add_argument("--quick", action="store_true", help="short protocol for tests (numbers are not honest)")
    r.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process instead of a child per combination (faster; memory not isolated)",
    )
    r.add_argument("--list-backends", action="store_true", help="list backends with availability and exit")
    c = sub.add_parser("compare", help="side-by-side table (or JSON / CSV / Markdown) of stored measurements")
    add_common(c)
    c.add_argument("--model", nargs="+", help="only these models")
    c.add_argument("--dataset", type=dataset_arg, help="only this dataset")
    c.add_argument("--backend", help="only this backend")
    c.add_argument("--format", choices=["table", "json", "csv", "markdown"], default="table")
    c.add_argument("--machine", metavar="SLUG", help="only measurements of this machine (see `profile results`)")
    res = sub.add_parser("results", help="write OUT/<machine>.md: one results file per machine in the store")
    add_common(res)
    res.add_argument("--out", default="docs/results", help="folder of the results files (default: docs/results)")
    rep = sub.add_parser("report", help="self-contained HTML report built from the store")
    add_common(rep)
    rep.add_argument("--out", default="reports/index.html")
    chk = sub.add_parser("check", help="trust check: our p50 against torch.utils.benchmark.Timer / a plain ORT loop")
    add_common(chk)
    chk.add_argument("--variant", required=True, help="variant id or unique prefix")
    chk.add_argument("--backend", required=True)
    chk.add_argument("--batch-size", type=int, default=64)
    chk.add_argument("--threads", type=int, help="CPU threads (default: all physical cores)")
    chk.add_argument(
        "--against",
        metavar="ID:BACKEND",
        help="also the speed-up over this variant on this backend, timed in alternation with it (stored; "
        "`profile results` lists it)",
    )
    sbs = sub.add_parser(
        "side-by-side",
        help="one model's fp32 and int8 forms in torch.compile, ONNX Runtime and OpenVINO, paired speed-ups (stored)",
    )
    add_common(sbs)
    sbs.add_argument("--model", required=True, help="zoo name (as trained)")
    sbs.add_argument("--dataset", type=dataset_arg, help="dataset it was trained on (default: the only one)")
    sbs.add_argument("--variant", help="the trained variant (default: the newest trained one)")
    sbs.add_argument("--batch-sizes", type=int_list, default=[1, 64], help="comma-separated (default 1,64)")
    sbs.add_argument("--threads", type=int, help="CPU threads (default: all physical cores)")
    return p


def _threads(args) -> int:
    """`--threads`, default all physical cores; below 1 is a UserError."""
    from deploybench.platform.env import physical_cores

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    return args.threads or physical_cores()


def _check(args) -> int:
    from deploybench.profile.backends import get_backend
    from deploybench.profile.crosscheck import cross_check

    get_backend(args.backend)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    threads = _threads(args)
    base_id, _, base_backend = (args.against or "").partition(":")
    if args.against and not (base_id and base_backend):
        raise UserError("--against takes VARIANT:BACKEND, e.g. c1be73da:torch-cpu")
    if base_backend:
        get_backend(base_backend)
    ws = open_workspace(args, record=False)
    variant = ws.get_variant(args.variant)
    base = ws.get_variant(base_id) if args.against else None  # every input checked before the first timing
    r = cross_check(ws, variant, args.backend, args.batch_size, threads)
    print(
        f"ours p50 {r['ours_ms']:.3f} ms, {r['reference']} median {r['reference_ms']:.3f} ms, "
        f"ratio {r['ratio']:.3f} (medians of {r['rounds']} alternated rounds)"
    )
    if base is not None:
        from deploybench.profile.latency import PAIRS
        from deploybench.profile.side_by_side import measure_pair

        pair = measure_pair(
            ws, variant, args.backend, base, base_backend, args.batch_size, threads, command=_command(args)
        )
        print(
            f"speed-up over {base_id} on {base_backend}: {pair['speedup']:.2f}x (median of {PAIRS} alternated pairs "
            "of blocks)"
        )
    return 0


def _command(args) -> str:
    """The command line as given (recorded with what it measured)."""
    return shlex.join(["deploybench", "profile", *args.argv])


def _side_by_side(args) -> int:
    from deploybench.optimize.base import resolve_parent
    from deploybench.profile.side_by_side import side_by_side

    threads = _threads(args)
    if any(bs < 1 for bs in args.batch_sizes):
        raise UserError(f"--batch-sizes must be 1 or more, got {args.batch_sizes}")
    ws = open_workspace(args, record=False)
    root = resolve_parent(ws, args.model, args.dataset, args.variant, args.data_dir)
    if root.stage != "train":
        raise UserError(f"--variant must be a trained variant; {root.id} is {root.chain}")
    pairs = side_by_side(ws, root, args.batch_sizes, threads, command=_command(args))
    if not pairs:
        raise UserError(f"nothing to compare for {root.model}: run optimize all --model {root.model} first")
    return 0


def _run(args) -> int:
    from deploybench.profile.backends import backend_names, get_backend
    from deploybench.profile.runner import profile_variants

    if args.list_backends:
        for name in backend_names():
            ok, why = get_backend(name).available()
            print(f"{name:<20} {'available' if ok else 'unavailable: ' + why}")
        return 0
    _threads(args)
    for name in args.backends or []:
        get_backend(name)  # unknown names fail before anything is measured
    if args.model != "all":
        from deploybench.models import get_model_info

        get_model_info(args.model)
    ws = open_workspace(args)
    if args.checkpoint:
        variants = [checkpoint_variant(ws, args)]
    elif args.variant:
        variants = [ws.get_variant(v) for v in args.variant]
    else:
        variants = ws.variants(None if args.model == "all" else args.model, args.dataset)
    if not variants:
        what = "any model" if args.model == "all" else args.model
        raise UserError(
            f"no variants of {what}{' on ' + args.dataset if args.dataset else ''} in {ws.root}; run `train` first"
        )
    rows = profile_variants(
        ws,
        variants,
        args.backends,
        batch_sizes=args.batch_sizes,
        threads=args.threads,
        quick=args.quick,
        data_dir=args.data_dir,
        isolate=not args.in_process,
    )
    measured = sum("skipped" not in r["metrics"] for r in rows)
    print(f"stored {len(rows)} measurement(s) ({measured} measured, {len(rows) - measured} skipped) in {ws.root}")
    return 0


def _compare(args) -> int:
    from deploybench.profile.compare import compare_rows, render
    from deploybench.store import Workspace, default_workspace

    ws = Workspace(args.workspace or default_workspace(), create=False)
    if args.backend:
        from deploybench.profile.backends import get_backend

        get_backend(args.backend)
    here = sorted({v.model for v in ws.variants()})
    unknown = [m for m in args.model or [] if m not in here]
    if unknown:  # a typo would otherwise read as "no measurements"
        raise UserError(
            f"no variants of {', '.join(map(repr, unknown))} in {ws.root}; models here: {', '.join(here) or 'none'}"
        )
    rows = compare_rows(ws, args.model, args.backend, args.dataset, machine=args.machine)
    print(render(rows, args.format))
    return 0


def _results(args) -> int:
    from deploybench.profile.compare import write_results
    from deploybench.store import Workspace, default_workspace

    ws = Workspace(args.workspace or default_workspace(), create=False)
    argv = (
        ["deploybench", "profile", "results"]
        + (["--workspace", args.workspace] if args.workspace else [])
        + (["--out", args.out] if args.out != "docs/results" else [])
    )
    paths = write_results(ws, args.out, shlex.join(argv))  # the file names the command that regenerates it
    if not paths:
        raise UserError(f"no measurements in {ws.root}; run `profile run` first")
    for path in paths:
        print(path)
    return 0


def _report(args) -> int:
    from deploybench.report import build_report
    from deploybench.store.atomic import check_file_target

    check_file_target(args.out, writable=True)
    print(build_report(open_workspace(args), args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    return run(
        lambda: {
            "run": _run,
            "compare": _compare,
            "results": _results,
            "report": _report,
            "check": _check,
            "side-by-side": _side_by_side,
        }[args.command](args)
    )


if __name__ == "__main__":
    sys.exit(main())
