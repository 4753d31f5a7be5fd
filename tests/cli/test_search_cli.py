"""`deploybench search` from the command line: SIGTERM ends a trial cleanly and the same command continues the study
(a real subprocess), and every bad input is one `error:` line, a non-zero exit and the workspace unchanged."""

import argparse
import hashlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from deploybench.cli import search as search_cli

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _argv(ws, data_dir, *extra: str) -> list[str]:
    return [
        "--workspace",
        str(ws.root),
        "--data-dir",
        str(data_dir),
        "--model",
        "lenet",
        "--dataset",
        "fashion-mnist",
        "--backend",
        "ort-cpu",
        "--budget",
        "100",
        "--quick",
        "--screen-fraction",
        "0.5",
        "--screen-val-images",
        "3",
        *extra,
    ]


def snapshot(root: Path) -> dict:
    """Every file's sha256 (databases aside) and every row of deploybench.db's tables."""
    files = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(("deploybench.db", "studies"))
    }
    con = sqlite3.connect(root / "deploybench.db")
    tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    rows = {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in tables}
    con.close()
    return dict(files=files, rows=rows, studies=(root / "studies.db").exists())


def _trials(ws, study: str) -> list:
    return optuna.load_study(study_name=study, storage=f"sqlite:///{ws.root / 'studies.db'}").trials


@pytest.mark.timeout(900)
def test_sigterm_ends_a_trial_and_the_same_command_continues(trained_workspace):
    ws, _, data_dir = trained_workspace
    argv = [sys.executable, "-m", "deploybench.cli.search", *_argv(ws, data_dir, "--trials", "4", "--study", "t")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:  # the search logs one line per finished trial
        seen.append(line)
        if line.startswith("trial 0 "):
            break
    else:
        pytest.fail("the search ended before its first trial finished:\n" + "".join(seen[-20:]))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143 and last.startswith("interrupted: stopped by SIGTERM"), err[-3000:]
    before = {t.number: t for t in _trials(ws, "t")}
    assert before[0].state in FINISHED
    assert not [t for t in before.values() if t.state == TrialState.RUNNING]  # the trial ended, none left hanging
    interrupted = [t for t in before.values() if t.state == TrialState.FAIL and t.params]

    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    after = _trials(ws, "t")
    assert sum(t.state in FINISHED for t in after) == 4
    for n, t in before.items():  # what finished is kept as it was, never run again (a queued menu recipe runs now)
        if t.state in FINISHED:
            assert (after[n].state, after[n].params, after[n].values) == (t.state, t.params, t.values)
    # what ran now was queued (the menu's recipes, an interrupted one) or drawn anew
    ran_now = [
        t for t in after if t.state in FINISHED and (t.number not in before or before[t.number].state not in FINISHED)
    ]
    assert ran_now and all(t.number not in before or before[t.number].state == TrialState.WAITING for t in ran_now)
    for t in interrupted:  # an interrupted recipe is made once more, by one later trial
        assert [r.number for r in ran_now if r.user_attrs.get("retry_of") == t.number and r.params == t.params]
    assert "winner within 100 pts" in done.stdout


def refused(argv: list[str], capsys, *expected: str) -> str:
    assert search_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--storage", "not a url"], ("is not a URL",)),
        (["--storage", "mysql://u@h/db"], ("unsupported scheme",)),
        (["--storage", "postgresql://u:secret@127.0.0.1:1/db"], ("cannot reach", "***")),
        (["--backend", "tpu"], ("unknown backend 'tpu'",)),
        (["--budget", "-1"], ("--budget",)),
        (["--model", "nosuch"], ("unknown model 'nosuch'",)),
        (["--objectives", "latency"], ("--objectives",)),
        (["--resume"], ("nothing to resume",)),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(trained_workspace, capsys, extra, expected):
    ws, _, data_dir = trained_workspace
    argv = _argv(ws, data_dir)
    for i in range(0, len(extra), 2):  # replace an option's value, or add the flag
        if extra[i] in argv and i + 1 < len(extra):
            argv[argv.index(extra[i]) + 1] = extra[i + 1]
        else:
            argv += extra[i : i + 2]
    before = snapshot(ws.root)
    err = refused(argv, capsys, *expected)
    assert "secret" not in err
    assert snapshot(ws.root) == before


def test_a_backend_that_cannot_run_here_is_an_impossible_budget(trained_workspace, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: ort-cuda may run here")
    ws, _, data_dir = trained_workspace
    argv = _argv(ws, data_dir)
    argv[argv.index("--backend") + 1] = "ort-cuda"
    before = snapshot(ws.root)
    refused(argv, capsys, "ort-cuda cannot run any variant on this machine")
    assert snapshot(ws.root) == before


def test_time_limits_read_units():
    assert [search_cli.duration_s(t) for t in ("90", "90s", "60m", "2h")] == [90, 90, 3600, 7200]
    with pytest.raises(argparse.ArgumentTypeError):
        search_cli.duration_s("soon")


@pytest.mark.timeout(900)
def test_two_workers_on_one_study_record_each_trial_once(trained_workspace):
    ws, _, data_dir = trained_workspace
    argv = [sys.executable, "-m", "deploybench.cli.search", *_argv(ws, data_dir, "--trials", "4", "--study", "two")]
    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=800) for w in workers]
    for w, (_, err) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, err[-3000:]
    trials = _trials(ws, "two")
    finished = [t for t in trials if t.state in FINISHED]
    # Workers that look at the same moment may each start the last trial (store.studies.run_trials).
    assert 4 <= len(finished) <= 5 and len(finished) == len(trials)
    for i, t in enumerate(finished):  # a recipe drawn twice is worked on once: the later trial takes it over
        if any(t.params == u.params for u in finished[:i]):
            assert t.user_attrs.get("same_as") is not None
    for t in finished:
        if t.state == TrialState.COMPLETE:
            assert ws.get_variant(t.user_attrs["variant_id"])
