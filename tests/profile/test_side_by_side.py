"""`profile side-by-side`: every toolchain's fp32 and int8 form paired with torch.compile's fp32 and with its own
fp32, stored, and listed by `profile results`."""

import pytest

from deploybench.optimize.export import ExportStage
from deploybench.optimize.quantize import QuantizeStage
from deploybench.profile import side_by_side as sbs
from deploybench.profile.compare import results_markdown
from deploybench.store.pairs import record_pair, stored_pairs


@pytest.fixture
def toolchains(trained_workspace):
    ws, root, data_dir = trained_workspace
    exported = ExportStage().run(ws, root, data_dir)
    made = dict(
        fp32_onnx=exported,
        pt2e=QuantizeStage(method="int8-pt2e", calib_size=16).run(ws, root, data_dir),
        ort=QuantizeStage(method="int8-ort", calib_size=16).run(ws, exported, data_dir),
    )
    return ws, root, data_dir, made


def test_each_form_is_paired_with_the_reference_and_its_own_fp32(toolchains, monkeypatch):
    ws, root, data_dir, made = toolchains
    timed = []

    def fake_paired(ws_, variant, backend, base, base_backend, batch_size, threads, runtimes=None):
        timed.append((variant.id, backend, base.id, base_backend, batch_size))
        return 2.0 + len(timed), ({"runtime_compute_dtype": "bfloat16"} if backend == "openvino-cpu" else {}), {}

    monkeypatch.setattr(sbs, "paired_against", fake_paired)
    lines = []
    pairs = sbs.side_by_side(
        ws, root, [1, 8], 1, command="deploybench profile side-by-side --model lenet", log=lines.append
    )
    onnx, pt2e, ort = made["fp32_onnx"].id, made["pt2e"].id, made["ort"].id
    expected = [
        (pt2e, "torch-compile-cpu", root.id, "torch-compile-cpu"),
        (onnx, "ort-cpu", root.id, "torch-compile-cpu"),
        (ort, "ort-cpu", root.id, "torch-compile-cpu"),
        (ort, "ort-cpu", onnx, "ort-cpu"),
        (onnx, "openvino-cpu", root.id, "torch-compile-cpu"),
    ]
    assert timed == [(*e, bs) for bs in (1, 8) for e in expected]
    assert any("OpenVINO int8: not made yet" in line for line in lines)  # int8-nncf was not made
    assert len(pairs) == len(stored_pairs(ws)) == 10
    text = results_markdown(ws, pairs[0]["machine"])
    assert "Paired speed-ups" in text
    assert f"| lenet | {root.id} |" in text  # its training line, though `profile run` never measured it
    row = f"| lenet | 8 | 1 | train+export+quantize[int8-ort] @ ort-cpu ({ort[:8]}) | int8 |"
    assert row in text and f"train+export @ ort-cpu ({onnx[:8]}) | float32 |" in text
    assert f"train+export @ openvino-cpu ({onnx[:8]}) | bfloat16 |" in text  # what the runtime reported


def test_each_form_is_loaded_once_per_batch_size_and_closed(toolchains, stand_in_runtimes, monkeypatch):
    # The reference is in every pair: compiling it again for each would cost a torch.compile per pair.
    from deploybench.profile import crosscheck

    ws, root, _, made = toolchains
    loads, closed, _ = stand_in_runtimes
    monkeypatch.setattr(crosscheck, "paired_speedup", lambda slow, fast: 1.0)
    pairs = sbs.side_by_side(ws, root, [1, 8], 1, command="test", log=lambda line: None)
    assert len(pairs) == 10  # as above: five pairs a batch size
    # root, int8-pt2e, int8-ort and the ONNX export on ort-cpu and on openvino-cpu: once each a batch size
    assert len(loads) == len(set(loads)) == 2 * 5
    assert sorted(closed) == sorted(loads)


def test_a_re_measured_pair_replaces_the_stored_one(trained_workspace):
    ws, root, _ = trained_workspace
    pair = dict(
        variant=root.id,
        backend="torch-cpu",
        against=root.id,
        against_backend="torch-compile-cpu",
        batch_size=1,
        threads=1,
        machine="m",
        speedup=1.5,
    )
    record_pair(ws, pair)
    record_pair(ws, dict(pair, speedup=1.7))
    record_pair(ws, dict(pair, batch_size=64, speedup=3.0))
    (ws.root / "pairs" / "junk.json").write_text("{not json")
    assert sorted(p["speedup"] for p in stored_pairs(ws)) == [1.7, 3.0]
    with pytest.raises(ValueError, match="speedup"):
        record_pair(ws, {k: v for k, v in pair.items() if k != "speedup"})


def test_side_by_side_without_made_forms_is_one_error_line(trained_workspace, capsys):
    from deploybench.cli import profile_cmd

    ws, root, data_dir = trained_workspace
    code = profile_cmd.main(
        ["side-by-side", "--model", "lenet", "--workspace", str(ws.root), "--data-dir", str(data_dir), "--threads", "1"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "error: nothing to compare for lenet: run optimize all --model lenet first" in err
    assert not stored_pairs(ws)
