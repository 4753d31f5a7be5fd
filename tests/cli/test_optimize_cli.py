"""`optimize`'s argument parser against the stages it drives."""

import subprocess
import sys

from deploybench.cli.optimize import build_parser
from deploybench.optimize.choices import QUANT_METHODS
from deploybench.optimize.quantize import METHODS


def test_quantize_offers_exactly_the_methods_of_the_one_table_and_each_is_implemented():
    choices = next(
        a.choices
        for a in build_parser()._subparsers._group_actions[0].choices["quantize"]._actions
        if a.dest == "method"
    )
    assert list(choices) == list(QUANT_METHODS)
    assert sorted(METHODS) == sorted(QUANT_METHODS)
    assert all(METHODS[n].spec is QUANT_METHODS[n] for n in METHODS)


def test_the_parser_is_built_without_importing_torch():
    code = (
        "import sys; from deploybench.cli.optimize import build_parser; build_parser(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-500:]
    assert build_parser().parse_args(["quantize", "--model", "m", "--method", "dynamic-pt2e"]).method == "dynamic-pt2e"
