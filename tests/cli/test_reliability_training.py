"""Training that cannot go well stops before it writes, or stores nothing: a user architecture whose forward
raises (or returns the wrong shape) is one `error:` line before any run folder or record exists, and a run whose
loss becomes NaN or infinite stops with one line and stores no variant."""

from test_reliability import refused, snapshot

from deploybench.cli import train as train_cli
from deploybench.store import Workspace

BROKEN = (
    "import torch.nn as nn\n\n\n"
    "class Raises(nn.Module):\n"
    "    def __init__(self, num_classes, in_channels):\n"
    "        super().__init__()\n        self.fc = nn.Linear(4, num_classes)\n\n"
    "    def forward(self, x):\n        return self.fc(x)  # a 28x28 image is not 4 features\n\n\n"
    "class WrongShape(nn.Module):\n"
    "    def __init__(self, num_classes, in_channels):\n"
    "        super().__init__()\n        self.fc = nn.Linear(28, 3)\n\n"
    "    def forward(self, x):\n        return self.fc(x)\n"
)


def _train(ws_root, data_dir, *argv):
    return lambda: train_cli.main(
        [
            "--dataset",
            "fashion-mnist",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--workspace",
            str(ws_root),
            "--data-dir",
            str(data_dir),
            *argv,
        ]
    )


def test_a_forward_that_raises_is_one_line_before_any_run_folder(trained_workspace, tmp_path, capsys, monkeypatch):
    ws, _, data_dir = trained_workspace
    (tmp_path / "broken_nets.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = snapshot(ws.root)
    refused(
        _train(ws.root, data_dir, "--model", "broken_nets:Raises"),
        capsys,
        "broken_nets:Raises: a forward pass on a batch of fashion-mnist images (2, 1, 28, 28) failed: RuntimeError",
    )
    refused(
        _train(ws.root, data_dir, "--model", "broken_nets:WrongShape"),
        capsys,
        "returns (2, 1, 28, 3) for a batch of 2, not (2, 10) logits",
    )
    assert snapshot(ws.root) == before
    assert not (ws.root / "runs" / "broken_nets:Raises").exists()


def test_a_run_whose_loss_diverges_stops_in_one_line_and_stores_no_variant(trained_workspace, capsys):
    ws, _, data_dir = trained_workspace
    variants = {v.id for v in ws.variants()}
    refused(
        _train(ws.root, data_dir, "--model", "lenet", "--lr", "1e30", "--seed", "3"),
        capsys,
        "training diverged: the loss became",
        "no variant is stored",
        code=2,
    )
    reopened = Workspace(ws.root, create=False)
    assert {v.id for v in reopened.variants()} == variants
    run = reopened.training_runs()[-1]
    assert run["status"] == "diverged"
    assert not reopened.run_dir("lenet", "fashion-mnist", run["id"]).exists()  # a rerun starts afresh


def test_two_identical_trainings_at_once_make_one_variant(tmp_path, tiny_fashion_mnist):
    import subprocess
    import sys

    ws_root = tmp_path / "ws"
    code = (
        "import sys; from deploybench.cli.train import main; sys.exit(main(['--model', 'lenet', '--dataset', "
        f"'fashion-mnist', '--epochs', '1', '--batch-size', '16', '--workspace', {str(ws_root)!r}, "
        f"'--data-dir', {str(tiny_fashion_mnist)!r}]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert all("Traceback" not in out + err for out, err in outs)
    ws = Workspace(ws_root, create=False)
    assert len([v for v in ws.variants() if v.stage == "train"]) == 1
    assert [r["status"] for r in ws.training_runs()] == ["done"]
    assert sum("training lenet (" in out + err for out, err in outs) == 1  # trained once, found by the other
