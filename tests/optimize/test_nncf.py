"""int8-nncf: NNCF post-training int8 of the ONNX export, as OpenVINO IR, evaluated and reloadable like any variant."""

import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")


def test_int8_nncf_makes_an_ir_variant_with_its_accuracy_that_reloads_fresh(trained_workspace, reload_fresh):
    from deploybench.optimize.quantize import QuantizeStage

    ws, trained, data_dir = trained_workspace
    v = QuantizeStage(method="int8-nncf", calib_size=16).run(ws, trained, data_dir)
    assert v.format == "openvino-ir" and sorted(v.files) == ["model.bin", "model.xml"]
    assert ws.get_variant(v.parent_id).format == "onnx"  # quantized from the fp32 ONNX export
    m = v.metrics
    assert m["compute_dtype"] == "int8" and m["calibration_images"] == 16
    assert 0 <= m["accuracy_top1"] <= 1 and m["test_images"] == 20 and m["agreement_top1"] is not None
    assert {"calib_size", "seed"} <= set(v.config) and "calib_method" not in v.config
    # int8 layers really are in the IR (FakeQuantize nodes NNCF inserted)
    assert "FakeQuantize" in (v.path / "model.xml").read_text()
    reload_fresh(ws, [v], data_dir)
    # the same config again is the same variant
    assert QuantizeStage(method="int8-nncf", calib_size=16).run(ws, trained, data_dir).id == v.id


def test_int8_nncf_is_a_method_choice_and_in_optimize_all():
    from deploybench.cli.optimize import build_parser
    from deploybench.optimize.choices import QUANT_METHODS
    from deploybench.optimize.quantize import METHODS

    spec = QUANT_METHODS["int8-nncf"]
    assert (spec.fmt, spec.compute_dtype, spec.onnx_parent, spec.in_all) == ("openvino-ir", "int8", True, True)
    assert METHODS["int8-nncf"].left_out_of_all() is None
    assert build_parser().parse_args(["quantize", "--model", "lenet", "--method", "int8-nncf"]).method == "int8-nncf"


def test_without_nncf_the_method_says_why_and_optimize_all_leaves_it_out(monkeypatch):
    import builtins

    from deploybench.optimize.quantize import METHODS

    real_import = builtins.__import__

    def no_nncf(name, *args, **kwargs):
        if name == "nncf" or name.startswith("nncf."):
            raise ImportError("No module named 'nncf'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nncf)
    why = METHODS["int8-nncf"].left_out_of_all()
    assert why and why.startswith("int8-nncf needs the nncf and openvino packages")
