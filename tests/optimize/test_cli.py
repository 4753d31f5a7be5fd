"""The `optimize` command: thin front end, one-line errors with exit 2."""

import pytest

from deploybench.cli.optimize import main


def _args(ws, data_dir, *rest):
    return [*rest, "--workspace", str(ws.root), "--data-dir", str(data_dir)]


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["quantize", "--model", "custom"],
            "error: no trained custom on fashion-mnist in {ws}; "
            "train it first with: train --model custom --dataset fashion-mnist",
        ),
        (
            ["quantize", "--model", "lenet", "--dataset", "cifar10"],
            "error: no trained lenet on cifar10 in {ws}; train it first with: train --model lenet --dataset cifar10",
        ),
        (
            ["prune", "--model", "lenet", "--ratio", "1.5"],
            "error: --ratio must be between 0 and 1 (exclusive), got 1.5",
        ),
        (["export", "--model", "lenet", "--variant", "ffff"], "error: no variant 'ffff' in {ws}"),
        (["quantize", "--model", "lenet", "--calib-size", "0"], "error: --calib-size must be at least 1"),
    ],
)
def test_errors_are_one_line(trained_workspace, capsys, argv, message):
    ws, _, data_dir = trained_workspace
    assert main(_args(ws, data_dir, *argv)) == 2
    err = capsys.readouterr().err
    assert err == message.format(ws=ws.root) + "\n"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU refusal")
def test_fp16_on_cpu_is_a_one_line_error(trained_workspace, capsys):
    ws, _, data_dir = trained_workspace
    assert main(_args(ws, data_dir, "quantize", "--model", "lenet", "--method", "fp16")) == 2
    assert capsys.readouterr().err.startswith("error: fp16 needs a GPU")


def test_variant_of_another_model_is_refused(trained_workspace, capsys):
    ws, trained, data_dir = trained_workspace
    assert main(_args(ws, data_dir, "export", "--model", "custom", "--variant", trained.id[:8])) == 2
    assert capsys.readouterr().err == f"error: variant {trained.id} is lenet on fashion-mnist, not custom\n"


def test_bad_choice_is_argparse_exit_2(trained_workspace):
    ws, _, data_dir = trained_workspace
    with pytest.raises(SystemExit) as exc:
        main(_args(ws, data_dir, "quantize", "--model", "lenet", "--method", "int4"))
    assert exc.value.code == 2


def test_prune_cli_records_a_variant(trained_workspace, capsys):
    ws, trained, data_dir = trained_workspace
    argv = _args(
        ws,
        data_dir,
        "prune",
        "--model",
        "lenet",
        "--ratio",
        "0.5",
        "--importance",
        "lamp",
        "--global",
        "--finetune-epochs",
        "0",
    )
    assert main(argv) == 0
    out = capsys.readouterr().out
    [v] = [v for v in ws.variants("lenet") if v.stage == "prune"]
    assert out.startswith(f"variant {v.id} (train+prune, torch-pruned)") and "MACs 416,520 → " in out
    assert v.config["global_pruning"] is True and v.config["importance"] == "lamp" and v.parent_id == trained.id
