"""Every command and subcommand prints its help and exits 0 (argparse %-formats help strings: a bare "%" in
one makes `--help` end in a traceback)."""

import argparse

import pytest

from deploybench.cli import main as cli_main


def _commands():
    import importlib

    yield ["pipeline"]
    for name, module in cli_main.COMMANDS.items():
        yield [name]
        parser = importlib.import_module(module).build_parser()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from ([name, sub] for sub in action.choices)


@pytest.mark.parametrize("argv", list(_commands()), ids=" ".join)
def test_help_is_printed(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        cli_main.main([*argv, "--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out
