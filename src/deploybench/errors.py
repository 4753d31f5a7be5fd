"""User-facing errors: the CLI prints them as one line and exits non-zero, never with a traceback."""

import errno
import sqlite3
import traceback

# OS errors that concern the workspace as a whole (full, read-only or forbidden disk): they stop any command.
WORKSPACE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)


class UserError(Exception):
    """Bad input from the user (unknown name, missing file, mismatched checkpoint, ...)."""


class DamagedStore(sqlite3.OperationalError):
    """A workspace whose database (or a record read with it) is damaged or is not a deploybench store.

    It is an `sqlite3.OperationalError` so that the CLI reports it as one line with exit status 1, as it does
    every failure of the workspace's database; its message names the file and how to recover.
    """


def unknown_choice(kind: str, name: str, choices) -> UserError:
    """An error for an unknown registry name that lists the valid choices."""
    return UserError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")


def check_input_shape(got, expected_chw, what: str) -> None:
    """Refuse a batch whose shape is not (batch, C, H, W) = (any, *expected_chw), naming both shapes."""
    got = tuple(int(d) for d in got)
    c, h, w = (int(d) for d in expected_chw)
    if len(got) == 4 and got[1:] == (c, h, w):
        return
    detail = f" ({got[1]} channels, the model takes {c})" if len(got) == 4 and got[1] != c else ""
    raise UserError(f"{what}: expected an input of shape (batch, {c}, {h}, {w}), got {got}{detail}")


def failure_line(exc: BaseException) -> str:
    """A failure that is reported and contained, as one line: a UserError's own message, otherwise the
    exception's type and the first line of its message."""
    if isinstance(exc, (UserError, DamagedStore)):
        return str(exc)
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {first}"


def traceback_tail(exc: BaseException) -> str:
    """For the log of a contained failure: the last frames of an unexpected error's traceback, on new lines
    (empty for a UserError or a DamagedStore, whose message says it all)."""
    if isinstance(exc, (UserError, DamagedStore)):
        return ""
    return "\n" + "".join(traceback.format_exception(exc)[-3:]).rstrip()
