"""Child processes that die with their parent, and what Linux's /proc tells about a process."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_dies_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen` that makes the child receive SIGKILL when this process dies, even by
    SIGKILL (Linux's parent-death signal, which survives `exec`); None where there is no such signal.

    The hook runs between fork and exec, where only this one thread exists: everything it calls is looked up
    here, before the fork, so that it imports and allocates nothing. A parent gone before the signal was set
    is seen by `getppid` and the child exits at once. The signal follows the thread that starts the child:
    start it from a thread that outlives it (the main thread)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, kill, getppid, leave = os.getpid(), int(signal.SIGKILL), os.getppid, os._exit

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, kill, 0, 0, 0)
        if getppid() != parent:
            leave(1)

    return hook


def process_argv(pid: int) -> list[str] | None:
    """The command line of a running process (/proc/PID/cmdline); None when it is gone, a zombie, or unknown
    (no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw or _state(pid) in (None, "Z"):  # a zombie's command line is empty or stale
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def parent_pid(pid: int) -> int | None:
    """The parent of a running process, from /proc/PID/stat; None when unknown."""
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def _state(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from its state on: the command name before it is in parentheses and may hold spaces."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    return fields if len(fields) > 1 else None
