"""`store.studies`: `--storage URL` checked up front (one UserError line), studies created or joined once, the
machine fingerprint recorded and checked, trials counted across workers."""

import json
import socket
import subprocess
import sys
import time

import optuna
import pytest

from deploybench.errors import UserError
from deploybench.store.studies import check_fingerprint, open_storage, open_study, run_trials, storage_url

TARGET = dict(command="test", model="m")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_storage_is_an_sqlite_file_in_the_workspace(tmp_path):
    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(None, tmp_path, heartbeat_s=5)
    assert (tmp_path / "studies.db").is_file() and storage.get_heartbeat_interval() == 5


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"])
def test_postgres_urls_use_psycopg_3(url, tmp_path):
    assert storage_url(url, tmp_path).startswith("postgresql+psycopg://u@h/db")


@pytest.mark.parametrize(
    "url,message",
    [
        ("not a url", "is not a URL"),
        ("mysql://u@h/db", "unsupported scheme 'mysql'"),
        ("postgresql://u:secret@h", "name the database"),
        ("sqlite://", "needs a file"),
        ("sqlite:////no/such/folder/studies.db", "no folder /no/such/folder"),
    ],
)
def test_bad_storage_urls_are_refused_without_connecting(url, message, tmp_path):
    with pytest.raises(UserError, match=message) as err:
        open_storage(url, tmp_path)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)


def test_an_unreachable_server_is_one_line_with_the_password_hidden(tmp_path):
    url = f"postgresql://u:secret@127.0.0.1:{_closed_port()}/db"
    with pytest.raises(UserError, match="cannot reach or log in to the study storage") as err:
        open_storage(url, tmp_path)
    assert "secret" not in str(err.value) and "***" in str(err.value) and "\n" not in str(err.value)


def test_resuming_needs_the_storage_and_the_study(tmp_path):
    with pytest.raises(UserError, match="nothing to resume: no study storage"):
        open_storage(None, tmp_path, must_exist=True)
    assert not (tmp_path / "studies.db").exists()
    storage = open_storage(None, tmp_path)
    with pytest.raises(UserError, match="nothing to resume: no study 's'"):
        open_study(storage, "s", directions=["maximize"], target=TARGET, resume=True, named=False)


def test_a_study_is_created_once_then_joined_only_when_asked(tmp_path):
    storage = open_storage(None, tmp_path)
    study, created = open_study(storage, "s", directions=["maximize"], target=TARGET, resume=False, named=False)
    assert created and study.user_attrs["target"] == TARGET
    again, created = open_study(storage, "s", directions=["maximize"], target=TARGET, resume=False, named=False)
    assert not created  # no trials yet: nothing to mix up
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(UserError, match="already has 1 trial.*--resume"):
        open_study(storage, "s", directions=["maximize"], target=TARGET, resume=False, named=False)
    for resume, named in ((True, False), (False, True)):
        assert not open_study(storage, "s", directions=["maximize"], target=TARGET, resume=resume, named=named)[1]
    with pytest.raises(UserError, match="holds another question \\(model differ: model='m'\\)"):
        open_study(storage, "s", directions=["maximize"], target=dict(TARGET, model="n"), resume=True, named=False)
    with pytest.raises(UserError, match="optimizes \\['maximize'\\], not \\['minimize'\\]"):
        open_study(storage, "s", directions=["minimize"], target=TARGET, resume=True, named=False)


def test_fingerprint_is_recorded_and_other_hardware_refused_when_latency_is_measured(tmp_path):
    study = optuna.create_study(storage=open_storage(None, tmp_path), study_name="s")
    here, there = dict(cpu_model="A", cpu_flags=["avx2"], gpu=None), dict(cpu_model="B", cpu_flags=[], gpu=None)
    check_fingerprint(study, here, measures_latency=True)
    assert study.user_attrs["machine_fingerprint"] == here
    check_fingerprint(study, here, measures_latency=True)
    check_fingerprint(study, there, measures_latency=False)  # accuracy-only studies take any worker
    with pytest.raises(
        UserError, match="measures latency on another machine \\(cpu_model A, gpu None\\); this worker has cpu_model B"
    ):
        check_fingerprint(study, there, measures_latency=True)
    assert study.user_attrs["machine_fingerprint"] == here


def test_run_trials_stops_at_the_study_total_and_fails_stale_trials(tmp_path):
    storage = open_storage(None, tmp_path, heartbeat_s=1)
    study = optuna.create_study(storage=storage, study_name="s")
    stale = study.ask()  # a trial whose worker died: it never beat
    storage.record_heartbeat(stale._trial_id)
    assert run_trials(study, lambda t: t.suggest_float("x", 0, 1), 3) == 2  # the stale one counts while fresh
    time.sleep(3.2)  # past the grace period of 2 heartbeats, on SQLite's clock that counts whole seconds
    assert run_trials(study, lambda t: t.suggest_float("x", 0, 1), 3) == 1  # the stale trial, queued again
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert study.trials[3].system_attrs["failed_trial"] == 0


POPPER = r"""
import json, sys
import optuna
from deploybench.store.studies import open_storage
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="queue", storage=open_storage(None, sys.argv[1]))
popped = []
while (trial_id := study._pop_waiting_trial_id()) is not None:
    popped.append(trial_id)
print(json.dumps(popped))
"""


def test_workers_on_one_sqlite_study_never_take_the_same_queued_trial(tmp_path):
    """SQLite ignores Optuna's SELECT ... FOR UPDATE: without write-locked transactions two workers could both
    take one enqueued trial (`_pop_waiting_trial_id`, what `study.ask` does first) and both run it."""
    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="queue", storage=storage)
    for x in range(60):
        study.enqueue_trial({"x": x})
    procs = [
        subprocess.Popen([sys.executable, "-c", POPPER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    popped = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    taken = [t for each in popped for t in each]
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 60
