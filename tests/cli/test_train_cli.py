"""The `train` and `deploybench` front ends: listing, one-line errors, non-zero exits."""

import json

import pytest

from deploybench.cli import train as train_cli


def test_list_models_json_for_a_dataset(capsys):
    assert train_cli.main(["--list-models", "--json", "--dataset", "fashion-mnist"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["custom"]["params"] == 1_740_746 and rows["custom"]["family"] == "cnn"
    assert rows["lenet"]["params"] == 61_706 and rows["lenet"]["dataset"] == "fashion-mnist"


def test_list_models_table_defaults_to_cifar10(capsys):
    assert train_cli.main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert "2,659,402" in out and "11,181,642" in out and "62,006" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "nope", "--dataset", "cifar10"], "choose one of: custom"),
        (["--model", "lenet", "--dataset", "mnist-3d"], "choose one of: cifar10, cifar100, fashion-mnist"),
        (["--model", "lenet"], "needs --model and --dataset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert train_cli.main(argv + ["--workspace", str(tmp_path / "ws"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "option,weights,expected",
    [
        ("--checkpoint", ("simple-cnn", 10, 1, 28), ("does not fit this model", "missing")),
        ("--pretrained", ("resnet18", 1000, 3, 224), ("model 'lenet' takes no pretrained",)),
    ],
)
def test_starting_weights_that_do_not_fit_are_one_line(option, weights, expected, tmp_path, tiny_fashion_mnist, capsys):
    import torch

    from deploybench.models import create_model

    torch.save(create_model(*weights).state_dict(), tmp_path / "weights.pt")
    argv = [
        "--model",
        "lenet",
        "--dataset",
        "fashion-mnist",
        "--epochs",
        "1",
        "--data-dir",
        str(tiny_fashion_mnist),
        "--workspace",
        str(tmp_path / "ws"),
        option,
        str(tmp_path / "weights.pt"),
    ]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert all(text in err for text in expected) and err.count("\n") == 1, err


def test_an_image_folder_is_one_dataset_from_any_directory(tmp_path, tiny_imagefolder, capsys, monkeypatch):
    """A relative `imagefolder:PATH` is made absolute: from another directory, the same folder finds its run
    (an id holding the relative text would name another dataset in each directory)."""
    ws = tmp_path / "ws"
    argv = ["--model", "lenet", "--epochs", "1", "--batch-size", "8", "--workspace", str(ws)]
    monkeypatch.chdir(tiny_imagefolder)
    assert train_cli.main(argv + ["--dataset", "imagefolder:train"]) == 0
    assert ": trained," in capsys.readouterr().out
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert train_cli.main(argv + ["--dataset", f"imagefolder:{tiny_imagefolder / 'train'}"]) == 0
    assert "already trained" in capsys.readouterr().out

    from deploybench.store import Workspace

    [v] = Workspace(ws).variants("lenet")
    assert v.dataset == f"imagefolder:{tiny_imagefolder / 'train'}"


def test_a_user_architecture_is_known_by_its_code(tmp_path, tiny_fashion_mnist, capsys, monkeypatch):
    """Edited code trains again, and a variant of the earlier code is never loaded into the edited one, even
    when its weights would fit (here only the activation changes)."""
    import sys

    from deploybench.cli import optimize as optimize_cli
    from deploybench.store import Workspace

    code = (
        "import torch.nn as nn\n\n\ndef net(num_classes, in_channels):\n    return nn.Sequential(nn.Conv2d("
        "in_channels, 4, 3), nn.{act}(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n"
    )
    (tmp_path / "my_arch.py").write_text(code.format(act="ReLU"))
    monkeypatch.syspath_prepend(str(tmp_path))
    common = [
        "--model",
        "my_arch:net",
        "--dataset",
        "fashion-mnist",
        "--workspace",
        str(tmp_path / "ws"),
        "--data-dir",
        str(tiny_fashion_mnist),
    ]
    train = common + ["--epochs", "1", "--batch-size", "16"]
    assert train_cli.main(train) == 0 and ": trained," in capsys.readouterr().out
    assert train_cli.main(train) == 0 and "already trained" in capsys.readouterr().out
    [first] = Workspace(tmp_path / "ws").variants("my_arch:net")

    (tmp_path / "my_arch.py").write_text(code.format(act="Tanh"))
    monkeypatch.delitem(sys.modules, "my_arch")  # as a new command (a new process) would import it
    assert train_cli.main(train) == 0 and ": trained," in capsys.readouterr().out
    assert len({v.config["arch_sha256"] for v in Workspace(tmp_path / "ws").variants("my_arch:net")}) == 2
    assert optimize_cli.main(["export", "--variant", first.id[:8]] + common) == 2
    err = capsys.readouterr().err
    assert "code of user architecture 'my_arch:net' changed" in err and err.count("\n") == 1
    # Without --variant, optimize takes the run of the present code; profiling measures it and passes over the
    # earlier one, which it says, instead of stopping at it.
    assert optimize_cli.main(["export"] + common) == 0
    [export] = [v for v in Workspace(tmp_path / "ws").variants("my_arch:net") if v.stage == "export"]
    assert export.parent_id != first.id
    from deploybench.cli import profile_cmd

    assert (
        profile_cmd.main(["run", "--quick", "--in-process", "--backends", "torch-cpu", "--batch-sizes", "2"] + common)
        == 0
    )
    out = capsys.readouterr()
    assert f"[{first.id[:8]}]: not measured, the code of its user architecture changed" in out.out + out.err
    measured = {m["variant_id"] for m in Workspace(tmp_path / "ws").measurements()}
    assert first.id not in measured and export.parent_id in measured
