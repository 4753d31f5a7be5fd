"""User-facing errors: the CLI prints them as one line and exits non-zero, never with a traceback."""


class UserError(Exception):
    """Bad input from the user (unknown name, missing file, mismatched checkpoint, ...)."""


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
