"""What every command shares: workspace/data options and the one-line error contract."""
from __future__ import annotations

import argparse
import errno
import os
import sqlite3
import sys
from typing import Callable

from deploybench.errors import UserError
from deploybench.store import Workspace, default_workspace


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None,
                        help="workspace folder (default: $DEPLOYBENCH_WORKSPACE or ./workspace)")
    parser.add_argument("--data-dir", default="data", help="where datasets live (default: ./data)")


def open_workspace(args, record: bool = True) -> Workspace:
    """The workspace named by --workspace; `record` logs this command line in it (the report's provenance)."""
    ws = Workspace(args.workspace or default_workspace())
    if record:
        ws.log_command([os.path.basename(sys.argv[0])] + sys.argv[1:])
    return ws


def run(fn: Callable[[], int | None]) -> int:
    """Run a command: user errors, I/O failures and interrupts become one line on stderr and a non-zero exit."""
    from deploybench.train.engine import TrainingInterrupted

    try:
        return fn() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except sqlite3.OperationalError as exc:
        print(f"error: workspace database: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT):
            print(f"error: {exc.strerror}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
            return 1
        raise


def comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]
