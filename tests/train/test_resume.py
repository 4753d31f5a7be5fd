"""Killed, interrupted and resumed training runs reach exactly the weights of an uninterrupted run (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from deploybench.store import Workspace

ARGS = [
    "--model",
    "simple-cnn",
    "--dataset",
    "fashion-mnist",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--checkpoint-every",
    "2",
]

# Runs the real `train` CLI in a child process after arming a fault: after `after` calls of `hook`,
# the process kills itself (SIGKILL, or SIGTERM which the trainer handles), optionally mid-write.
CHILD = r"""
import os, signal, sys, torch
from deploybench.cli.train import main
mode, after = sys.argv[1], int(sys.argv[2])
calls = [0]
if mode == "kill-in-save":
    real_save = torch.save
    def save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == after:
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a checkpoint")
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *a, **k)
    torch.save = save
else:
    sig = signal.SIGKILL if mode == "kill" else signal.SIGTERM
    real_step = torch.optim.SGD.step
    def step(self, *a, **k):
        calls[0] += 1
        if calls[0] == after:
            if mode == "term-group":  # as `timeout` or a job scheduler do: the workers get it too, from outside
                import subprocess
                subprocess.run([sys.executable, "-c", f"import os, signal; os.killpg({os.getpgrp()}, signal.SIGTERM)"])
            else:
                os.kill(os.getpid(), sig)
        return real_step(self, *a, **k)
    torch.optim.SGD.step = step
sys.exit(main(sys.argv[3:]))
"""


def train_cli(args, cwd, **kw):
    return subprocess.run(
        [sys.executable, "-m", "deploybench.cli.train", *args], cwd=cwd, capture_output=True, text=True, **kw
    )


def faulty_run(mode, after, args, cwd):
    return subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(after), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        start_new_session=True,
    )  # its own process group, for "term-group"


def final_weights(ws_dir):
    ws = Workspace(ws_dir)
    (variant,) = ws.variants()
    return torch.load(variant.path / "model.pt", weights_only=True), variant


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_fashion_mnist):
    ws = tmp_path_factory.mktemp("ref") / "ws"
    r = train_cli(ARGS + ["--workspace", str(ws), "--data-dir", str(tiny_fashion_mnist)], cwd=ws.parent)
    assert r.returncode == 0, r.stderr
    return final_weights(ws)


@pytest.mark.parametrize("mode,after", [("kill", 9), ("kill-in-save", 4), ("term", 10)])
def test_interrupted_run_resumes_to_identical_weights(mode, after, reference, tmp_path, tiny_fashion_mnist):
    args = ARGS + ["--workspace", str(tmp_path / "ws"), "--data-dir", str(tiny_fashion_mnist)]
    r = faulty_run(mode, after, args, tmp_path)
    if mode == "term":
        assert r.returncode == 143 and "continue with --resume" in r.stderr
    else:
        assert r.returncode == -signal.SIGKILL
    assert "Traceback" not in r.stderr
    assert Workspace(tmp_path / "ws").variants() == []  # nothing recorded from a dead run

    if mode == "term":  # neither --resume nor --restart: the interrupted run is kept, not overwritten
        refused = train_cli(args, cwd=tmp_path)
        assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr

    resumed = train_cli(args + ["--resume"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    weights, variant = final_weights(tmp_path / "ws")
    ref_weights, ref_variant = reference
    assert variant.id == ref_variant.id
    assert weights.keys() == ref_weights.keys()
    for k in weights:
        assert torch.equal(weights[k], ref_weights[k]), k
    assert variant.metrics["accuracy_top1"] == ref_variant.metrics["accuracy_top1"]
    # The stored weights are the best epoch's; the last epoch's validation loss shows its weights match too.
    history = [json.loads((v.path / "training.json").read_text())["history"] for v in (variant, ref_variant)]
    assert history[0][-1]["val_loss"] == history[1][-1]["val_loss"]


def test_the_main_job_continues_an_interrupted_run(reference, tmp_path, tiny_fashion_mnist):
    # `deploybench pipeline` trains with resume=None: after a SIGTERM it picks the run up where it stopped
    # (neither refusing nor starting over) and reaches the uninterrupted run's weights.
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    args = ARGS + ["--workspace", str(tmp_path / "ws"), "--data-dir", str(tiny_fashion_mnist)]
    assert faulty_run("term", 10, args, tmp_path).returncode == 143
    recipe = default_recipe("simple-cnn", epochs=2, batch_size=8, checkpoint_every=2)
    logged = []
    variant, created = train_model(
        Workspace(tmp_path / "ws"),
        "simple-cnn",
        "fashion-mnist",
        recipe,
        data_dir=tiny_fashion_mnist,
        resume=None,
        log=logged.append,
    )
    assert created and variant.id == reference[1].id
    weights, _ = final_weights(tmp_path / "ws")
    assert all(torch.equal(weights[k], reference[0][k]) for k in reference[0])
    history = json.loads((variant.path / "training.json").read_text())["history"]
    assert any("resumed_at_step" in row for row in history)  # it went on from the checkpoint


def test_rerun_reuses_and_resume_without_run_is_refused(reference, tmp_path, tiny_fashion_mnist):
    ref_ws = reference[1].path.parents[3]
    args = ARGS + ["--workspace", str(ref_ws), "--data-dir", str(tiny_fashion_mnist)]
    again = train_cli(args, cwd=tmp_path)
    assert again.returncode == 0 and "already trained" in again.stdout
    nothing = train_cli(
        ARGS + ["--workspace", str(tmp_path / "ws"), "--data-dir", str(tiny_fashion_mnist), "--resume"], cwd=tmp_path
    )
    assert nothing.returncode == 2 and "nothing to resume" in nothing.stderr


def test_training_records_figures_and_metrics(trained_workspace):
    ws, variant, _ = trained_workspace
    for f in ["model.pt", "learning_curves.png", "confusion_matrix.png", "training.json"]:
        assert (variant.path / f).is_file(), f
    assert any(p.name.startswith("events.out.tfevents") for p in (variant.path / "tensorboard").iterdir())
    report = json.loads((variant.path / "training.json").read_text())
    assert len(report["per_class"]) == 10 and set(report["per_class"][0]) >= {"precision", "recall", "f1"}
    assert sum(map(sum, report["confusion"])) == variant.metrics["test_images"] == 20
    assert 0 <= variant.metrics["accuracy_top1"] <= 1 and variant.metrics["params"] == 61_706
    assert "device" not in variant.config or torch.cuda.is_available()  # a CPU run without workers: no device key
    assert ws.training_runs()[0]["status"] == "done"


def test_trains_on_an_image_folder(tmp_path, tiny_imagefolder):
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    ws = Workspace(tmp_path / "ws")
    dataset = f"imagefolder:{tiny_imagefolder}"
    variant, created = train_model(
        ws, "simple-cnn", dataset, default_recipe("simple-cnn", epochs=1, batch_size=8), log=lambda *_: None
    )
    assert created and variant.dataset == dataset and variant.metrics["params"] > 0
    assert variant.path.parent.name.startswith("imagefolder-") and variant.path.is_relative_to(ws.artifacts)


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory):
    """An image folder (3 classes, 20 training and 2 test PNGs each): 54 training images, 7 batches of 8."""
    from ondisk import write_imagefolder

    return write_imagefolder(tmp_path_factory.mktemp("pictures"), n_train=20)


def test_loader_workers_are_recorded_and_a_resumed_run_reaches_the_same_weights(
    picture_folder, tmp_path, tiny_fashion_mnist
):
    # An image folder is read through a DataLoader; with workers the augmentation comes from the workers' own
    # random streams: another variant than the same recipe without them, reproducible, and a SIGTERM mid-epoch
    # resumes to the same weights.
    dataset = f"imagefolder:{picture_folder}"

    def args(ws, *workers):
        return [*ARGS, "--dataset", dataset, "--workspace", str(tmp_path / ws), *workers]

    alone = train_cli(args("alone"), cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    reference = final_weights(tmp_path / "alone")
    whole = train_cli(args("whole", "--workers", "2"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    weights, variant = final_weights(tmp_path / "whole")
    assert variant.config["loader_workers"] == 2 and variant.metrics["loader_workers"] == 2
    assert "loader_workers" not in reference[1].config and variant.id != reference[1].id
    assert "augment_on" not in variant.config and "augment_on" not in reference[1].config  # a DataLoader's
    assert any(not torch.equal(weights[k], reference[0][k]) for k in weights)  # other augmentation, other weights

    cut_run = faulty_run("term-group", 10, args("cut", "--workers", "2"), tmp_path)  # in epoch 2, at step 3 of 7
    assert cut_run.returncode == 143 and "continue with --resume" in cut_run.stderr, cut_run.stderr
    assert "Traceback" not in cut_run.stderr  # no "DataLoader worker ... is killed by signal" either
    resumed = train_cli(args("cut", "--workers", "2", "--resume"), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    again, cut = final_weights(tmp_path / "cut")
    assert cut.id == variant.id and all(torch.equal(again[k], weights[k]) for k in weights)
    # The stored weights are the best epoch's; the last epoch's validation loss shows its weights match too.
    history = [json.loads((v.path / "training.json").read_text())["history"] for v in (variant, cut)]
    assert "resumed_at_step" in history[1][-1] and history[1][-1]["val_loss"] == history[0][-1]["val_loss"]

    held = train_cli(  # Fashion-MNIST is held in memory and augmented in batches: workers would do nothing
        ARGS + ["--workspace", str(tmp_path / "held"), "--data-dir", str(tiny_fashion_mnist), "--workers", "2"],
        cwd=tmp_path,
    )
    assert held.returncode == 2 and held.stderr.startswith("error: --workers") and "Traceback" not in held.stderr
    bad = train_cli(
        ARGS + ["--workspace", str(tmp_path / "bad"), "--data-dir", str(tiny_fashion_mnist), "--workers", "-1"],
        cwd=tmp_path,
    )
    assert bad.returncode == 2 and "--workers" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "bad" / "runs").exists()


@pytest.mark.gpu
def test_trains_on_a_gpu_with_mixed_precision_and_stores_cpu_weights(tmp_path, tiny_fashion_mnist):
    from deploybench.train.recipes import default_recipe
    from deploybench.train.run import train_model

    recipe = default_recipe("simple-cnn", epochs=2, batch_size=8, checkpoint_every=2)
    ws = Workspace(tmp_path / "ws")
    variant, created = train_model(
        ws, "simple-cnn", "fashion-mnist", recipe, data_dir=tiny_fashion_mnist, device="cuda", log=lambda *_: None
    )
    assert created and variant.metrics["device"].startswith("cuda") and variant.metrics["epochs"] == 2
    on_cpu, _ = train_model(
        ws, "simple-cnn", "fashion-mnist", recipe, data_dir=tiny_fashion_mnist, device="cpu", log=lambda *_: None
    )
    assert variant.config["device"] == "cuda" and "device" not in on_cpu.config and on_cpu.id != variant.id
    weights = torch.load(variant.path / "model.pt", weights_only=True)
    assert {t.device.type for t in weights.values()} == {"cpu"}
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    ckpt = torch.load(
        next(p for p in (ws.root / "runs").rglob("last.pt") if p.parent.name == variant.id), weights_only=True
    )
    assert ckpt["scaler"]["scale"] > 0  # the AMP loss scaler ran and is checkpointed for a resume


# The `train` CLI whose first optimizer step creates STARTED and then waits for RELEASE: while it waits, it holds
# the recipe's lock and is training, so a second process started then is sure to find it busy.
HELD = r"""
import sys, time, torch
from pathlib import Path
from deploybench.cli.train import main
started, release = Path(sys.argv[1]), Path(sys.argv[2])
real_step = torch.optim.SGD.step
def step(self, *a, **k):
    if not started.exists():
        started.touch()
        deadline = time.monotonic() + 240
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return real_step(self, *a, **k)
torch.optim.SGD.step = step
sys.exit(main(sys.argv[3:]))
"""


def _wait_for(condition, proc, what):
    deadline = time.monotonic() + 240
    while not condition():
        assert proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_two_train_processes_on_one_recipe_train_it_once(reference, tmp_path, tiny_fashion_mnist):
    # The second waits for the first (Workspace.making) and finds its variant: one run, not two side by side.
    args = ARGS + ["--workspace", str(tmp_path / "ws"), "--data-dir", str(tiny_fashion_mnist)]
    started, release, second_log = tmp_path / "started", tmp_path / "release", tmp_path / "second.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(
        [sys.executable, "-c", HELD, str(started), str(release), *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(started.exists, first, "the first process's first step")
        with open(second_log, "w") as log:
            second = subprocess.Popen(
                [sys.executable, "-m", "deploybench.cli.train", *args],
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            _wait_for(lambda: "waiting for it" in second_log.read_text(), second, "the second process to wait")
            release.touch()
            assert second.wait(timeout=300) == 0, second_log.read_text()[-3000:]
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0 and "Traceback" not in err, err[-3000:]
    finally:
        release.touch()
        if first.poll() is None:
            first.kill()
    assert "Traceback" not in second_log.read_text() and "waiting for it" not in err
    weights, variant = final_weights(tmp_path / "ws")
    assert variant.id == reference[1].id and all(torch.equal(weights[k], reference[0][k]) for k in weights)
    assert len(Workspace(tmp_path / "ws").training_runs()) == 1
