"""One `train sweep` study in a real PostgreSQL server, run by several worker processes: every trial is recorded
once, no recipe is trained twice, every worker contributes, and a worker killed with SIGKILL mid-trial leaves a
study that another worker completes (its stale trial failed by heartbeat and its run resumed from its checkpoint).
"""

import collections
import json
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from deploybench.store import Workspace
from deploybench.store.studies import storage_url
from postgres import postgres_bin_dir, running_postgres

TRIALS = 5
STUDY = "shared"


@pytest.fixture(scope="module")
def postgres_url():
    bin_dir, why = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip(why)
    with running_postgres(bin_dir) as url:
        yield url


class Workers:
    """`train sweep` worker processes on one study, each writing its output to a file of its own."""

    def __init__(self, argv: list[str], folder):
        self.argv, self.folder, self.procs = argv, folder, {}

    def start(self, name: str, *extra: str) -> subprocess.Popen:
        out = open(self.folder / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "deploybench.cli.train", "sweep", *self.argv, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out.close()
        return self.procs[name]

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{(self.folder / f'{n}.log').read_text()[-3000:]}" for n in self.procs)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _pid(trial) -> int | None:
    worker = trial.user_attrs.get("worker")
    return int(worker.rsplit(":", 1)[1]) if worker else None


def _wait(what: str, condition, workers: Workers, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (found := condition()) is not None:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{workers.logs()}")


def _kill_mid_trial(study_fn, proc: subprocess.Popen, workers: Workers):
    """SIGKILL `proc` while it trains a trial past its first epoch, once it has finished a trial of its own.
    Returns the killed trial's number, or None when the worker ended before (the study was complete)."""

    def mid_trial():
        if proc.poll() is not None:
            return False  # not None: stops the wait
        trials = study_fn().get_trials(deepcopy=False)
        mine = [t for t in trials if _pid(t) == proc.pid]
        running = [t for t in mine if t.state == TrialState.RUNNING and t.intermediate_values]
        return (
            running[0].number
            if running and any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in mine)
            else None
        )

    while True:
        number = _wait(f"worker {proc.pid} mid-trial", mid_trial, workers, timeout_s=90)
        if number is False:
            return None
        # Stopped first, so the trial cannot end between the look at its state and the kill: one that ended
        # before the stop is not a trial killed mid-run, and the next one is waited for.
        proc.send_signal(signal.SIGSTOP)
        if study_fn().trials[number].state == TrialState.RUNNING:
            proc.kill()
            proc.wait()
            return number
        proc.send_signal(signal.SIGCONT)


@pytest.mark.timeout(400)
def test_workers_share_a_postgres_study_and_a_killed_worker_is_recovered(postgres_url, tiny_fashion_mnist, tmp_path):
    ws_dir = tmp_path / "ws"
    argv = [
        "--model",
        "lenet",
        "--dataset",
        "fashion-mnist",
        "--trials",
        str(TRIALS),
        "--storage",
        postgres_url,
        "--study",
        STUDY,
        "--heartbeat-seconds",
        "1",
        "--workspace",
        str(ws_dir),
        "--data-dir",
        str(tiny_fashion_mnist),
    ]
    workers = Workers(argv, tmp_path)
    storage = optuna.storages.RDBStorage(storage_url(postgres_url, ws_dir))
    started = time.monotonic()
    try:
        a, b = workers.start("a"), workers.start("b")

        def study():
            return optuna.load_study(study_name=STUDY, storage=storage)

        _wait(
            "the study", lambda: True if STUDY in {s.study_name for s in storage.get_all_studies()} else None, workers
        )
        # B is killed mid-trial; then A too, unless it completed the study first: C must finish the study.
        killed = {proc.pid: n for proc in (b, a) if (n := _kill_mid_trial(study, proc, workers)) is not None}
        assert b.pid in killed
        c = workers.start("c", "--resume")
        assert c.wait(timeout=240) == 0, workers.logs()
    finally:
        workers.stop_all()
    seconds = time.monotonic() - started

    trials = study().trials
    by_state = collections.Counter(t.state for t in trials)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # Every trial recorded once: the study holds the requested trials and the killed ones, nothing else.
    assert len(finished) == TRIALS and by_state[TrialState.FAIL] == len(killed), (by_state, workers.logs())
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # Each killed trial was failed by its stale heartbeat and run again, resumed from its checkpoint.
    for number in killed.values():
        assert trials[number].state == TrialState.FAIL
        retry = next(t for t in finished if t.system_attrs.get("failed_trial") == number)
        assert retry.params == trials[number].params
        assert retry.user_attrs["trained_epochs"] < retry.params["epochs"]
    # No recipe trained twice; one training run per distinct recipe, none left running.
    trained = [json.dumps(t.params, sort_keys=True) for t in finished if t.user_attrs["trained_epochs"] > 0]
    assert len(trained) == len(set(trained)), trained
    recipes = {json.dumps(t.params, sort_keys=True) for t in trials}
    runs = Workspace(ws_dir).training_runs()
    assert len(runs) == len(recipes) and all(r["status"] in ("done", "interrupted") for r in runs), runs
    # Both first workers finished trials of their own; the resuming one completed the study when A was killed.
    contributors = collections.Counter(_pid(t) for t in finished)
    assert {a.pid, b.pid} | ({c.pid} if a.pid in killed else set()) <= set(contributors), contributors
    assert "best: trial" in (tmp_path / "c.log").read_text()
    print(
        f"{len(trials)} trials ({ {s.name: n for s, n in by_state.items()} }) by {len(contributors)} workers "
        f"in {seconds:.0f} s",
        file=sys.stderr,
    )
