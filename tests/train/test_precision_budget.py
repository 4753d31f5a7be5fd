"""Training precision (`--precision`) and time budgets (`--budget-minutes`)."""

import json
import subprocess
import sys

import pytest
import torch

from deploybench.errors import UserError
from deploybench.models import create_model
from deploybench.store import Workspace
from deploybench.train import engine
from deploybench.train.engine import _BudgetPlanner, _start_run, training_precision
from deploybench.train.recipes import default_recipe
from deploybench.train.run import train_model

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_exactly_where_the_cpu_computes_it_natively(monkeypatch, native):
    monkeypatch.setattr(engine, "has_native_bf16", lambda: native)
    assert training_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert training_precision("fp32", CPU) == "fp32"
    assert training_precision("bf16", CPU) == "bf16"  # asked for: emulated where it is not native


def test_precisions_the_device_cannot_run_are_refused():
    with pytest.raises(UserError, match="fp16 trains on a GPU only"):
        training_precision("fp16", CPU)
    with pytest.raises(UserError, match="--precision must be one of"):
        training_precision("int4", CPU)


def test_a_bf16_run_is_a_variant_of_its_own_with_fp32_weights(tmp_path, tiny_fashion_mnist):
    ws = Workspace(tmp_path / "ws")
    recipe = default_recipe("simple-cnn", epochs=1, batch_size=8)
    quiet = dict(data_dir=tiny_fashion_mnist, device="cpu", log=lambda *_: None)
    bf16, _ = train_model(ws, "simple-cnn", "fashion-mnist", recipe, precision="bf16", **quiet)
    fp32, _ = train_model(ws, "simple-cnn", "fashion-mnist", recipe, precision="fp32", **quiet)
    assert bf16.id != fp32.id
    assert bf16.config["precision"] == "bf16" and "precision" not in fp32.config
    assert bf16.metrics["train_precision"] == "bf16" and fp32.metrics["train_precision"] == "fp32"
    assert bf16.metrics["images_per_s"] > 0 and fp32.metrics["images_per_s"] > 0
    weights = torch.load(bf16.path / "model.pt", weights_only=True)
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    # The autocast really ran in bf16: the two runs' weights differ.
    other = torch.load(fp32.path / "model.pt", weights_only=True)
    assert any(not torch.equal(weights[k], other[k]) for k in weights if weights[k].is_floating_point())


def test_the_budget_sizes_the_schedule_to_the_timed_steps(tmp_path):
    recipe = default_recipe("simple-cnn", batch_size=8, budget_minutes=1.0)
    net = create_model("simple-cnn", 10, 1, 28)
    run = _start_run(net, 800, recipe, "fp32", CPU, tmp_path / "last.pt", resume=False)
    assert run.state.total_steps == 0 and run.state.steps_per_epoch == 100  # unsized until timed
    lines = []
    planner = _BudgetPlanner(run, val_images=80, log=lines.append)
    run.state.step = 30
    for _ in range(30):  # the steps the schedule has taken before it is sized
        run.opt.step()
        run.sched.step()
    sched = run.sched
    planner.plan(step_seconds=0.1)
    assert run.sched is sched  # the epoch under way holds this object: it must be the one that is sized
    # 60 s at 0.1 s a step plus a validation pass of 10 batches at a third of a step per epoch of 100 steps.
    expected = 30 + int(60 / (0.1 + 10 * 0.1 / 3 / 100))
    assert expected - 5 <= run.state.total_steps <= expected  # less the little time this test has taken
    assert run.sched.total_steps == run.state.total_steps and run.sched.last_epoch == 30
    assert "time budget 1 min" in lines[0] and f"{run.state.total_steps} steps" in lines[0]


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "step"])
def test_a_schedule_resized_mid_run_continues_as_one_made_for_that_length_from_the_start(schedule):
    # A scheduler built on an optimizer starts from the lr the optimizer holds; after steps of the first schedule
    # that is no longer the base, and cosine's recursive form would carry the difference to the end.
    from deploybench.train.engine import make_scheduler, resize_schedule

    recipe = default_recipe("simple-cnn", lr=0.05, schedule=schedule)

    def lrs(resize_at):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
        sched, seen = make_scheduler(opt, recipe, 40 if resize_at is None else 1000), []
        for step in range(40):
            if step == resize_at:
                resize_schedule(sched, opt, recipe, 40, step)
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return seen

    assert lrs(resize_at=25)[25:] == pytest.approx(lrs(resize_at=None)[25:], rel=1e-12)


def test_a_budgeted_run_records_the_epochs_it_did_and_ends_its_schedule(tmp_path, tiny_fashion_mnist):
    ws = Workspace(tmp_path / "ws")
    lines = []
    # 27 steps an epoch: the schedule is sized inside the first epoch, which then goes on with it.
    recipe = default_recipe("simple-cnn", batch_size=2, budget_minutes=0.02)
    variant, _ = train_model(
        ws, "simple-cnn", "fashion-mnist", recipe, data_dir=tiny_fashion_mnist, device="cpu", log=lines.append
    )
    assert any(line.startswith("time budget 0.02 min:") for line in lines), lines
    rows = json.loads((variant.path / "training.json").read_text())["history"]
    assert variant.metrics["epochs"] > 0 and len(rows) == -(-variant.metrics["epochs"] // 1)
    assert rows[-1]["lr"] < recipe.lr / 100  # the OneCycle schedule ran to its end
    assert variant.config["recipe"]["budget_minutes"] == 0.02


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "deploybench.cli.train", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--epochs", "2", "--budget-minutes", "5"], "give it or --epochs, not both"),
        (["--budget-minutes", "0"], "--budget-minutes must be above 0"),
        (["--precision", "fp16"], "fp16 trains on a GPU only"),
    ],
)
def test_bad_speed_options_are_one_line_and_train_nothing(tmp_path, tiny_fashion_mnist, extra, message):
    out = _cli(
        "--model", "simple-cnn", "--dataset", "fashion-mnist", "--device", "cpu", "--workspace", str(tmp_path / "ws"),
        "--data-dir", str(tiny_fashion_mnist), *extra, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode != 0 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ws" / "runs").exists()
