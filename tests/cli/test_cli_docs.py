"""docs/cli.md documents every option of the commands it describes in full, as their parsers define them."""

import argparse
import importlib
from pathlib import Path

import pytest

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()

# (module, subcommand or None): the commands whose every option the reference lists.
COMMANDS = [
    ("deploybench.cli.bundle", None),
    ("deploybench.cli.import_cmd", None),
    ("deploybench.cli.app", None),
    ("deploybench.cli.profile_cmd", "compare"),
    ("deploybench.cli.profile_cmd", "run"),
    ("deploybench.cli.optimize", "quantize"),
    ("deploybench.cli.train", None),
    ("deploybench.cli.main", "pipeline"),
]


def _parser(module: str, sub: str | None) -> argparse.ArgumentParser:
    parser = importlib.import_module(module).build_parser()
    if sub is None:
        return parser
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[sub]


@pytest.mark.parametrize("module, sub", COMMANDS, ids=lambda x: str(x))
def test_every_option_and_choice_is_in_the_reference(module, sub):
    missing = []
    for action in _parser(module, sub)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        names = action.option_strings or [action.metavar or action.dest.upper()]
        missing += [n for n in names if f"`{n}" not in DOC and f" {n}" not in DOC]
        missing += [str(c) for c in action.choices or [] if str(c) not in DOC]
    assert not missing, f"docs/cli.md does not mention {missing} of {module} {sub or ''}"
