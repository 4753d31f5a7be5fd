"""`train sweep`: trials are ordinary training runs; the best validation top-1 wins and its command trains the
same variant; pruned runs are recorded as interrupted; a study resumes; bad input is one line."""

import shlex

import optuna
import pytest

from deploybench.cli import train as train_cli
from deploybench.errors import UserError
from deploybench.store import Workspace
from deploybench.store.studies import open_storage
from deploybench.train.recipes import default_recipe
from deploybench.train.sweep import SEARCH_SPACE, Dim, base_params, sweep, train_command

# lenet at 1-2 steps an epoch on the tiny fixture: a trial takes about a second.
TINY_SPACE = (Dim("lr", "log", 0.01, 0.2), Dim("epochs", "int", 1, 2))


def _sweep(ws, data, n, **kw):
    kw.setdefault("space", TINY_SPACE)
    kw.setdefault("base", default_recipe("lenet", epochs=2))
    kw.setdefault("log", lambda line: None)
    return sweep(ws, "lenet", "fashion-mnist", n, data_dir=data, **kw)


def _study(ws_dir, name="train-sweep-lenet-fashion-mnist"):
    return optuna.load_study(study_name=name, storage=open_storage(None, ws_dir))


def test_cli_sweep_picks_the_best_validation_top1_and_prints_a_command_that_trains_it(
    tmp_path, tiny_fashion_mnist, capsys
):
    common = ["--dataset", "fashion-mnist", "--data-dir", str(tiny_fashion_mnist), "--workspace", str(tmp_path)]
    assert train_cli.main(["sweep", "--model", "lenet", "--trials", "3", *common]) == 0
    out = capsys.readouterr().out
    study = _study(tmp_path)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(study.trials) == len(trials) == 3
    assert trials[0].user_attrs["default_recipe"]
    assert trials[0].params == base_params(SEARCH_SPACE, default_recipe("lenet"))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number))
    attrs = study.user_attrs
    assert attrs["best_trial"] == best.number and attrs["best_val_top1"] == best.value
    assert attrs["best_variant_id"] == best.user_attrs["variant_id"]
    ws = Workspace(tmp_path)
    assert ws.get_variant(best.user_attrs["variant_id"]).metrics["best_val_top1"] == best.value
    # Every complete trial is a trained variant; one training run per distinct recipe.
    assert len(ws.training_runs()) == len({tuple(sorted(t.params.items())) for t in trials})
    assert f"use it: {attrs['best_command']}" in out and f"validation top-1 {100 * best.value:.2f}%" in out
    argv = shlex.split(attrs["best_command"])
    assert argv[:2] == ["train", "--model"]
    assert train_cli.main([*argv[1:], "--workspace", str(tmp_path)]) == 0
    assert "already trained (same recipe), test top-1" in capsys.readouterr().out


def test_pruning_stops_a_run_which_is_recorded_as_interrupted_and_never_trained_again(tmp_path, tiny_fashion_mnist):
    ws, lines = Workspace(tmp_path), []
    # A threshold above 100% validation top-1 makes every run hopeless: each stops after its first epoch of three.
    result = _sweep(
        ws,
        tiny_fashion_mnist,
        2,
        space=(Dim("epochs", "choice", choices=(3,)),),
        pruner=optuna.pruners.ThresholdPruner(lower=1.01),
        log=lines.append,
    )
    first, second = result.study.trials
    assert first.state == second.state == optuna.trial.TrialState.PRUNED and result.best is None
    assert first.user_attrs["trained_epochs"] == 1 and list(first.intermediate_values) == [33]
    assert any(line.startswith("trial 0: pruned after epoch 1 of 3: validation top-1") for line in lines), lines
    # The same recipe again is answered from the study: no training at all.
    assert second.user_attrs["trained_epochs"] == 0 and second.user_attrs["same_as"] == 0
    assert second.intermediate_values == first.intermediate_values
    runs = ws.training_runs()
    assert [r["status"] for r in runs] == ["interrupted"] and not ws.variants()


def test_resume_continues_the_study_and_a_finished_recipe_costs_nothing(tmp_path, tiny_fashion_mnist):
    ws = Workspace(tmp_path)
    first = _sweep(ws, tiny_fashion_mnist, 2)
    assert first.ran == 2
    with pytest.raises(UserError, match="already has 2 trial\\(s\\); pass --resume"):
        _sweep(ws, tiny_fashion_mnist, 3)
    again = _sweep(ws, tiny_fashion_mnist, 3, resume=True)
    assert again.ran == 1 and [t.number for t in again.study.trials] == [0, 1, 2]
    assert _sweep(ws, tiny_fashion_mnist, 3, resume=True).ran == 0  # the study has its 3 trials
    # A recipe trained before (by `train` or another study) is found, not trained again.
    other = _sweep(ws, tiny_fashion_mnist, 1, study_name="other")
    assert other.best.user_attrs["trained_epochs"] == 0
    assert other.best.user_attrs["variant_id"] == first.study.trials[0].user_attrs["variant_id"]
    with pytest.raises(UserError, match="nothing to resume: no study 'nope'"):
        _sweep(ws, tiny_fashion_mnist, 1, study_name="nope", resume=True)


def test_train_command_names_every_field_that_differs_from_the_default():
    recipe = default_recipe("lenet", lr=0.123456789, schedule="cosine", augment=False, limit_train=100)
    assert train_command("lenet", "fashion-mnist", recipe, data_dir="d") == (
        "train --model lenet --dataset fashion-mnist --lr 0.123456789 --schedule cosine --no-augment "
        "--limit-train 100 --data-dir d"
    )


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--storage", "mysql://u@h/db"], "unsupported scheme 'mysql'"),
        (["--storage", "postgresql://u:pw@127.0.0.1:1/db"], "cannot reach or log in to the study storage"),
        (["--trials", "0"], "--trials must be 1 or more"),
        (["--resume"], "nothing to resume: no study storage"),
        (["--workers", "2"], "without DataLoader workers"),
    ],
)
def test_bad_input_is_one_error_line_and_leaves_the_workspace_as_it_was(
    extra, message, tmp_path, tiny_fashion_mnist, capsys
):
    argv = [
        "sweep",
        "--model",
        "lenet",
        "--dataset",
        "fashion-mnist",
        "--trials",
        "2",
        "--data-dir",
        str(tiny_fashion_mnist),
        "--workspace",
        str(tmp_path / "ws"),
        *extra,
    ]
    assert train_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert "pw@" not in err
    assert not (tmp_path / "ws" / "studies.db").exists() and Workspace(tmp_path / "ws").commands() == []


def test_sweep_help_and_plain_train_still_parse(capsys):
    with pytest.raises(SystemExit) as stop:
        train_cli.main(["sweep", "--help"])
    assert stop.value.code == 0 and "--storage URL" in capsys.readouterr().out
    assert train_cli.build_parser().parse_args(["--model", "lenet", "--dataset", "cifar10"]).model == "lenet"


# The `train sweep` CLI in a child process that SIGTERMs itself at its `after`-th optimizer step.
TERM_CHILD = r"""
import os, signal, sys, torch
from deploybench.cli.train import main
after, calls, real_step = int(sys.argv[1]), [0], torch.optim.SGD.step
def step(self, *a, **k):
    calls[0] += 1
    if calls[0] == after:
        os.kill(os.getpid(), signal.SIGTERM)
    return real_step(self, *a, **k)
torch.optim.SGD.step = step
sys.exit(main(sys.argv[2:]))
"""


def test_sigterm_is_one_line_and_the_queued_trial_resumes_the_run(tmp_path, tiny_fashion_mnist):
    import subprocess
    import sys

    argv = ["sweep", "--model", "lenet", "--dataset", "fashion-mnist", "--trials", "1", "--workspace", str(tmp_path)]
    argv += ["--data-dir", str(tiny_fashion_mnist)]
    stopped = subprocess.run([sys.executable, "-c", TERM_CHILD, "2", *argv], capture_output=True, text=True)
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.startswith("interrupted: stopped by SIGTERM at epoch 2") and stopped.stderr.count("\n") == 1
    failed, queued = _study(tmp_path).trials
    assert failed.state == optuna.trial.TrialState.FAIL and queued.state == optuna.trial.TrialState.WAITING
    assert (
        queued.system_attrs["fixed_params"] == failed.params
        and queued.user_attrs["default_recipe"]
        and queued.user_attrs["retry_of"] == 0
    )
    assert train_cli.main([*argv, "--resume"]) == 0
    resumed = _study(tmp_path).trials[1]
    assert resumed.state == optuna.trial.TrialState.COMPLETE
    assert resumed.user_attrs["trained_epochs"] == resumed.params["epochs"] - 1  # epoch 1 was not trained again
