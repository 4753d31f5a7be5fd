"""User-facing errors: the CLI prints them as one line and exits non-zero, never with a traceback."""


class UserError(Exception):
    """Bad input from the user (unknown name, missing file, mismatched checkpoint, ...)."""


def unknown_choice(kind: str, name: str, choices) -> UserError:
    """An error for an unknown registry name that lists the valid choices."""
    return UserError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(choices))}")
