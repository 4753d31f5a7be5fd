"""Progress output: bars redrawn in place for a person at a terminal, plain lines for a log file or CI.

A tqdm bar redraws itself with carriage returns several times a second; written into a file each redraw stays
there. So bars are drawn only when both stdout (the log) and stderr (where bars draw) are terminals; elsewhere a
`Lines` stands in, with the same calls: per-step updates print nothing and `milestone` prints one line.
"""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator

from tqdm import tqdm


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def interactive() -> bool:
    """Whether progress may redraw in place: stdout and stderr are both terminals."""
    return _is_terminal(sys.stdout) and _is_terminal(sys.stderr)


class Bar(tqdm):
    """A tqdm bar; a milestone becomes its postfix."""

    def milestone(self, text: str) -> None:
        """Show `text` after the bar."""
        self.set_postfix_str(text)


class Lines:
    """Progress for logs: counts like a bar, prints one line per `milestone` and `write`, nothing per step."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        desc: str = "",
        total: int | None = None,
        log: Callable[[str], None] = print,
    ):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total, self.log, self.n = iterable, desc, total, log, 0

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.n += 1

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count `n` more steps done."""
        self.n += n

    def set_postfix(self, *args, **values) -> None:
        """Per-step figures: a bar shows them, a log does not."""

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        """Per-step text: a bar shows it, a log does not."""

    def milestone(self, text: str) -> None:
        """One line: the description, the number of the step under way out of the total, and `text`."""
        count = f" {self.n + 1}/{self.total}" if self.total else ""
        self.log(f"{self.desc}{count}: {text}" if self.desc else text)

    def write(self, line: str) -> None:
        """One line of output."""
        self.log(line)

    def close(self) -> None:
        """Nothing to clear."""


def _drop(_line: str) -> None:
    pass


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    log: Callable[[str], None] = print,
    enabled: bool = True,
    **bar_options,
) -> Bar | Lines:
    """Progress over `iterable` (or `total` steps counted with `update`).

    Args:
        desc: what is progressing, the start of every line.
        log: where `Lines` writes (a bar draws on stderr).
        enabled: False shows nothing (a `Lines` that drops its lines).
        bar_options: tqdm's options (unit, leave, mininterval, ...), for the bar only.
    Returns:
        a `Bar` when enabled and `interactive()`, else `Lines`.
    """
    if not enabled:
        return Lines(iterable, desc=desc, total=total, log=_drop)
    if interactive():
        return Bar(iterable, desc=desc, total=total, **bar_options)
    return Lines(iterable, desc=desc, total=total, log=log)


def note(line: str) -> None:
    """Print one line of progress on stderr, above any bar being drawn there."""
    tqdm.write(line, file=sys.stderr)
