"""int8-nncf-ac: NNCF's quantize_with_accuracy_control, calibrated like int8-nncf, its drop checked on validation
images (never test images), its max drop in the variant's config and id, the achieved drop recorded."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deploybench.errors import UserError

pytest.importorskip("nncf")
pytest.importorskip("openvino")


def test_int8_nncf_ac_checks_validation_images_and_records_the_achieved_drop(trained_workspace, monkeypatch):
    from deploybench.optimize import quantize
    from deploybench.optimize.base import stage_data
    from deploybench.optimize.quantize import QuantizeStage

    ws, trained, data_dir = trained_workspace
    splits = stage_data(ws, trained, data_dir).splits
    seen = []
    real = quantize._top1_per_image

    def spy(compiled, items):
        items = list(items)
        seen.extend(x for x, _ in items)
        return real(compiled, items)

    monkeypatch.setattr(quantize, "_top1_per_image", spy)
    v = QuantizeStage(method="int8-nncf-ac", calib_size=16, max_drop=0.2).run(ws, trained, data_dir)

    assert v.format == "openvino-ir" and sorted(v.files) == ["model.bin", "model.xml"]
    assert ws.get_variant(v.parent_id).format == "onnx"
    assert {k: v.config[k] for k in ("method", "calib_size", "max_drop", "val_size", "seed")} == {
        "method": "int8-nncf-ac",
        "calib_size": 16,
        "max_drop": 0.2,
        "val_size": 1000,
        "seed": 0,
    }
    assert "calib_method" not in v.config and "qat_epochs" not in v.config
    m = v.metrics
    assert m["compute_dtype"] == "int8" and m["calibration_images"] == 16 and m["max_drop"] == 0.2
    assert m["validation_images"] == len(splits.val) > 0  # val_size 1000 > the tiny split: all of it
    assert m["val_drop"] == pytest.approx(m["val_top1_fp32"] - m["val_top1_int8"])
    assert m["max_drop_met"] == (m["val_drop"] <= 0.2 + 1e-9) and (m["note"] is None) == m["max_drop_met"]
    assert m["test_images"] == 20 and 0 <= m["accuracy_top1"] <= 1  # the test split is read once, after
    from deploybench.cli.optimize import _describe

    assert "validation top-1" in _describe(v) and "max 20.00)" in _describe(v)
    # Every image NNCF's validation function saw is a validation image, none a test image.
    val = [splits.val[i][0] for i in range(len(splits.val))]
    test = [splits.test[i][0] for i in range(len(splits.test))]
    assert seen and all(any(torch.equal(x[0], y) for y in val) for x in seen)
    assert not any(torch.equal(x[0], t) for x in seen for t in test)

    # The same config is the same variant; another max drop is another variant.
    monkeypatch.setattr(quantize, "_top1_per_image", real)
    assert QuantizeStage(method="int8-nncf-ac", calib_size=16, max_drop=0.2).run(ws, trained, data_dir).id == v.id
    other = QuantizeStage(method="int8-nncf-ac", calib_size=16, max_drop=0.0, val_size=4).run(ws, trained, data_dir)
    assert other.id != v.id and other.config["max_drop"] == 0.0 and other.metrics["validation_images"] == 4


_CHILD = "DEPLOYBENCH_TEST_IN_CHILD"


def test_layers_go_back_to_fp32_until_the_drop_is_within_max_drop(request):
    """Runs in a pytest process of its own, as `optimize quantize --method int8-nncf-ac` (not in `optimize all`)
    runs in a process of its own: after NNCF's accuracy restorer, a later torch.compile in the same process
    (another test's) has crashed the interpreter with a segmentation fault."""
    if os.environ.get(_CHILD) == request.node.nodeid:
        _restorer_reverts_layers(request.getfixturevalue("trained_workspace"), request.getfixturevalue("monkeypatch"))
        return
    root = Path(__file__).resolve().parents[2]
    child = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid]
    env = dict(os.environ, **{_CHILD: request.node.nodeid})
    done = subprocess.run(child, capture_output=True, text=True, env=env, cwd=root, timeout=600)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def _restorer_reverts_layers(trained_workspace, monkeypatch):
    # The tiny lenet is at chance, so int8 costs it nothing: the accuracy restorer is exercised with a stand-in
    # for top-1 that is the share of compute layers OpenVINO runs in fp32 (1.0 fp32, 0.0 all int8).
    from deploybench.artifacts.openvino_runtime import layer_precisions
    from deploybench.optimize import quantize
    from deploybench.optimize.quantize import QuantizeStage

    def share_fp32(compiled, items):
        layers = layer_precisions(compiled)
        score = 1 - sum(n for p, n in layers.items() if p in ("i8", "u8")) / sum(layers.values())
        return [score for x, _ in items for _ in x]

    monkeypatch.setattr(quantize, "_top1_per_image", share_fp32)
    ws, trained, data_dir = trained_workspace
    plain = QuantizeStage(method="int8-nncf", calib_size=16).run(ws, trained, data_dir)
    v = QuantizeStage(method="int8-nncf-ac", calib_size=16, max_drop=0.5).run(ws, trained, data_dir)
    m = v.metrics
    assert m["val_top1_fp32"] == 1.0 and m["val_drop"] == pytest.approx(1 - m["val_top1_int8"])
    assert 0 < m["val_drop"] <= 0.5 and m["max_drop_met"] and m["note"] is None
    # Some quantizers were removed, not all: fewer FakeQuantize nodes than int8-nncf's, but some.
    assert 0 < m["fake_quantize_nodes"] < (plain.path / "model.xml").read_text().count('type="FakeQuantize"')


def test_other_methods_keep_their_config_without_the_accuracy_control_options(trained_workspace):
    from deploybench.optimize.quantize import QuantizeStage

    ws, trained, data_dir = trained_workspace
    v = QuantizeStage(method="int8-nncf", calib_size=8).run(ws, trained, data_dir)
    assert "max_drop" not in v.config and "val_size" not in v.config


def test_int8_nncf_ac_is_a_method_choice_left_out_of_optimize_all():
    from deploybench.cli.optimize import build_parser
    from deploybench.optimize.choices import QUANT_METHODS
    from deploybench.optimize.pipeline import default_chains

    spec = QUANT_METHODS["int8-nncf-ac"]
    assert (spec.fmt, spec.compute_dtype, spec.onnx_parent, spec.in_all) == ("openvino-ir", "int8", True, False)
    assert "max_drop" in spec.options and "calib_size" in spec.options
    assert "quantize:int8-nncf-ac" not in [c.name for c in default_chains()]
    args = build_parser().parse_args(["quantize", "--model", "lenet", "--method", "int8-nncf-ac", "--max-drop", "0.02"])
    assert (args.method, args.max_drop) == ("int8-nncf-ac", 0.02)


@pytest.mark.parametrize("options", [dict(max_drop=-0.1), dict(max_drop=1.0), dict(val_size=0)])
def test_a_bad_max_drop_or_val_size_is_refused(options):
    from deploybench.optimize.quantize import QuantizeStage

    with pytest.raises(UserError):
        QuantizeStage(method="int8-nncf-ac", **options)


def test_max_drop_with_another_method_is_one_error_line(capsys):
    from deploybench.cli.optimize import main

    with pytest.raises(SystemExit) as stop:
        main(["quantize", "--model", "lenet", "--method", "int8-nncf", "--max-drop", "0.01"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "error: quantize: --max-drop is an option of --method int8-nncf-ac, not of int8-nncf" in err
