"""What every command shares: workspace/data options and the one-line error contract."""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import threading
from typing import Callable

from deploybench.artifacts.verify import set_trusted
from deploybench.errors import WORKSPACE_ERRNOS, UserError
from deploybench.store import Workspace, default_workspace


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors (unknown choice, missing or malformed option) are one line,
    `<prog>: error: <message>`, and exit status 2, as every other refusal: not the whole usage block. Subparsers
    made with `add_subparsers` are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace", default=None, help="workspace folder (default: $DEPLOYBENCH_WORKSPACE or ./workspace)"
    )
    parser.add_argument("--data-dir", default="data", help="where datasets live (default: ./data)")
    parser.add_argument(
        "--trust-artifacts",
        action="store_true",
        help="load torch.export programs that another user or machine made (a workspace copied or "
        "imported from elsewhere); without it they are refused, since loading one can run code",
    )


def add_training_speed_options(parser: argparse.ArgumentParser) -> None:
    """`--precision` and `--budget-minutes`, of `train` and `pipeline`."""
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="training arithmetic (default auto: bf16 mixed precision where the CPU or GPU computes bf16 natively, "
        "fp32 elsewhere on the CPU, fp16 on GPUs without bf16); recorded in the variant's id",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        help="train each model for the steps that fit in this many minutes (timed on the first steps; the "
        "schedule is sized to it) instead of its epochs",
    )


def budget_minutes(args) -> float | None:
    """`--budget-minutes`, refused with `--epochs` (the budget decides the epochs)."""
    if args.budget_minutes is None:
        return None
    if args.epochs is not None:
        raise UserError("--budget-minutes decides how many epochs to train: give it or --epochs, not both")
    if not args.budget_minutes > 0:
        raise UserError(f"--budget-minutes must be above 0, got {args.budget_minutes}")
    return args.budget_minutes


# (workspace, row) of this command's line in each workspace it opened: `run` takes the line back out when the
# command fails, so a refused command leaves the workspace's records exactly as they were.
_LOGGED: list[tuple[Workspace, int]] = []


def open_workspace(args, record: bool = True) -> Workspace:
    """The workspace named by --workspace; `record` logs this command line in it (the report's provenance,
    which a report built by this very command includes); the line is removed again if the command fails."""
    set_trusted(bool(getattr(args, "trust_artifacts", False)))  # before anything is loaded, children included
    ws = Workspace(args.workspace or default_workspace())
    if record:
        _LOGGED.append((ws, ws.log_command([os.path.basename(sys.argv[0])] + sys.argv[1:])))
    return ws


def _retract_commands() -> None:
    while _LOGGED:
        ws, row = _LOGGED.pop()
        try:
            ws.forget_command(row)
        except (sqlite3.Error, OSError):  # the failure may be the workspace itself (read-only, full disk)
            pass


class Terminated(KeyboardInterrupt):
    """SIGTERM (from `kill`, `timeout`, a job scheduler) outside training: raised wherever the main thread is,
    as Ctrl-C raises KeyboardInterrupt, so every atomic writer drops its temporary file and the command ends
    with one line. Training installs its own handler while it runs, which checkpoints first."""


def _terminated(signum, frame):
    raise Terminated


def run(fn: Callable[[], int | None]) -> int:
    """Run a command: user errors, I/O failures and interrupts (Ctrl-C, SIGTERM) become one line on stderr and a
    non-zero exit, and the command is not left in the workspace's log."""
    _LOGGED.clear()
    code = 1
    main_thread = threading.current_thread() is threading.main_thread()  # only it may set a signal handler
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        code = _run(fn)
        return code
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if code != 0:
            _retract_commands()


def _run(fn: Callable[[], int | None]) -> int:
    from deploybench.train.engine import TrainingInterrupted

    try:
        return fn() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 143
    except Terminated:
        print(
            "interrupted: stopped by SIGTERM; what was finished before it is kept and nothing half-written is "
            "left (every file is written atomically)",
            file=sys.stderr,
        )
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except sqlite3.OperationalError as exc:
        print(f"error: workspace database: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno in WORKSPACE_ERRNOS:
            print(f"error: {exc.strerror}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
            return 1
        raise


def add_checkpoint_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="start from external weights (a state dict of this architecture, loaded with "
        "weights_only=True; needs --dataset)",
    )


def checkpoint_variant(ws: Workspace, args):
    """The root variant holding `args.checkpoint` for `args.model` on `args.dataset` (imported once, validated
    before anything is written)."""
    from deploybench.train.run import import_checkpoint

    if getattr(args, "variant", None):
        raise UserError("--checkpoint and --variant exclude each other")
    if not args.dataset:
        raise UserError("--checkpoint needs --dataset: the dataset whose input shape and classes the weights fit")
    if args.model in (None, "all"):
        raise UserError("--checkpoint needs --model: the architecture the weights belong to")
    return import_checkpoint(
        ws,
        args.model,
        args.dataset,
        args.checkpoint,
        data_dir=args.data_dir,
        log=lambda msg: print(msg, file=sys.stderr),
    )


def comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def int_list(text: str) -> list[int]:
    """argparse type of `--batch-sizes`: comma-separated integers (their range is the library's to check)."""
    try:
        return [int(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def dataset_arg(text: str) -> str:
    """argparse type of `--dataset`: the dataset's canonical name (`canonical_dataset`)."""
    from deploybench.data import canonical_dataset

    return canonical_dataset(text)
