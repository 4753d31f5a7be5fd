"""`optimize`'s argument parser against the stages it drives."""
from deploybench.cli.optimize import QUANT_METHODS, build_parser
from deploybench.optimize.quantize import METHODS


def test_quantize_offers_exactly_the_quantize_stages_methods():
    # The parser keeps its own list (building it must not import torch); it must name every method, no other.
    assert sorted(QUANT_METHODS) == sorted(METHODS)
    assert build_parser().parse_args(["quantize", "--model", "m", "--method", "dynamic-pt2e"]).method == "dynamic-pt2e"
