"""Optuna studies shared by several workers: `--storage URL` opened as an Optuna storage, and the checks every
worker makes before it adds trials to a study (what the study optimizes, on which machine).

- no URL: `WORKSPACE/studies.db`, an SQLite file (embedded, nothing to start; workers on one machine share it);
- `sqlite:///PATH`: another SQLite file;
- `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB` (or `postgres://`): a PostgreSQL server, through psycopg 3, for
  workers on several machines.

The studies are not kept in `deploybench.db`: Optuna owns its tables and their migrations, and a refused command
must leave the workspace's own store exactly as it was.

Every storage has heartbeats: a worker killed while it runs a trial stops beating, and the next worker that
looks (`run_trials`) marks that trial failed and queues its parameters again, so the study still gets its
trials and the killed run is continued from its checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from deploybench.errors import UserError

STUDIES_FILE = "studies.db"
HEARTBEAT_S = 60  # a trial whose worker has been silent for 2 heartbeats is failed and queued again
CONNECT_TIMEOUT_S = 10  # an unreachable server is an error after this, not a hang
SQLITE_BUSY_TIMEOUT_S = 60  # as the workspace's own database: writers wait for each other
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Heartbeats and their retry callback are marked experimental by Optuna; their warnings are noise here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _fail_stale_trials(study: optuna.Study) -> None:
    with _quiet():
        optuna.storages.fail_stale_trials(study)


def storage_url(url: str | None, workspace: str | os.PathLike) -> str:
    """The SQLAlchemy URL of `--storage URL` (None: the workspace's `studies.db`), checked without connecting.

    Raises UserError for text that is not a URL, a scheme other than sqlite or postgresql, or a PostgreSQL URL
    without a database name."""
    import sqlalchemy

    if url is None:
        return f"sqlite:///{(Path(workspace) / STUDIES_FILE).absolute()}"
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(
            f"--storage {url!r} is not a URL; use sqlite:///PATH or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        ) from None
    if parsed.drivername == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise UserError(
                f"--storage {url!r}: an SQLite storage needs a file (sqlite:///PATH) that other workers can open"
            )
        return url
    if parsed.drivername not in _POSTGRES_SCHEMES:
        raise UserError(
            f"--storage {display_url(url)}: unsupported scheme {parsed.drivername!r}; use sqlite:///PATH "
            f"or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE (psycopg 3)"
        )
    if not parsed.database:
        raise UserError(f"--storage {display_url(url)}: name the database (postgresql://USER@HOST/DATABASE)")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def display_url(url: str) -> str:
    """`url` with its password hidden, for messages and logs."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return repr(url)


def _write_locked_transactions(engine) -> None:
    """Make every SQLite transaction of `engine` take the write lock when it begins (BEGIN IMMEDIATE).

    Optuna changes a trial's state by reading it and writing it in one transaction, under SELECT ... FOR UPDATE,
    which SQLite ignores: two workers could both read an enqueued (WAITING) trial and both run it, and the second
    to finish fails with "Cannot tell a COMPLETE trial". A transaction that holds the write lock from its start
    makes that read and write one step; the busy timeout makes the other worker wait its turn. (PostgreSQL honours
    FOR UPDATE.) This is SQLAlchemy's recipe for pysqlite: the driver's own transaction handling is turned off."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while Optuna checked the schema were made before the hooks


def open_storage(
    url: str | None, workspace: str | os.PathLike, *, heartbeat_s: int = HEARTBEAT_S, must_exist: bool = False
) -> optuna.storages.RDBStorage:
    """Open `--storage URL` (None: `WORKSPACE/studies.db`) as an Optuna storage, connecting once to check it.

    Args: heartbeat_s: seconds between a running trial's heartbeats (every worker of a study must use the same);
    must_exist: refuse an SQLite file that is not there yet (resuming), instead of creating it.
    Returns the storage. Raises UserError, one line, for a bad URL, a file that cannot be opened, an unreachable
    server or refused credentials, before any trial starts."""
    import sqlalchemy

    sa_url = storage_url(url, workspace)
    shown = display_url(url) if url else sa_url
    sqlite = sa_url.startswith("sqlite")
    if sqlite:
        path = Path(sqlalchemy.engine.make_url(sa_url).database)
        if must_exist and not path.is_file():
            raise UserError(f"nothing to resume: no study storage at {path}")
        if not path.parent.is_dir():
            raise UserError(f"--storage {shown}: no folder {path.parent} for the SQLite file")
    connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_S} if sqlite else {"connect_timeout": CONNECT_TIMEOUT_S}
    try:
        with _quiet():
            storage = optuna.storages.RDBStorage(
                sa_url,
                engine_kwargs={"connect_args": connect_args, "pool_pre_ping": True},
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            )
        if sqlite:
            _write_locked_transactions(storage.engine)
        return storage
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        what = "cannot open" if sqlite else "cannot reach or log in to"
        raise UserError(f"--storage {shown}: {what} the study storage: {reason}") from None
    except RuntimeError as exc:  # Optuna's schema check: tables of another Optuna version
        raise UserError(f"--storage {shown}: {' '.join(str(exc).split())[:300]}") from None


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    *,
    directions: Sequence[str],
    target: dict,
    resume: bool,
    named: bool,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> tuple[optuna.Study, bool]:
    """Create the study `name`, or load it to add trials to it. Returns (study, created).

    Args: directions: "maximize"/"minimize" per objective; target: what the study optimizes (command, model,
    dataset, search space, ...), recorded on creation and compared on every load, so trials of different
    questions never mix; resume: continue an existing study (one that is missing is an error); named: the user
    named the study (`--study NAME`), which joins or continues it as `resume` does, as every worker of a
    distributed study does. An existing study with trials is otherwise refused, so a second run never adds to an
    earlier one by accident. Two workers creating one study at once are safe: one creates it, the other loads it.
    """
    target = json.loads(json.dumps(target))  # as the storage gives it back (tuples become lists)
    try:
        storage.get_study_id_from_name(name)
        exists = True
    except KeyError:
        exists = False
    if resume and not exists:
        raise UserError(f"nothing to resume: no study {name!r} in this storage")
    created = False
    if not exists:
        try:
            storage.create_new_study([optuna.study.StudyDirection[d.upper()] for d in directions], name)
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
            pass
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if created:
        study.set_user_attr("target", target)
        return study, True
    recorded = _wait_for_target(study)
    if recorded != target:
        diff = sorted(k for k in set(recorded) | set(target) if recorded.get(k) != target.get(k))
        raise UserError(
            f"study {name!r} holds another question ({', '.join(diff)} differ: "
            f"{', '.join(f'{k}={recorded.get(k)!r}' for k in diff)}); name a new one with --study"
        )
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        raise UserError(f"study {name!r} optimizes {[d.name.lower() for d in study.directions]}, not {directions}")
    if not (resume or named) and study.trials:
        raise UserError(
            f"study {name!r} already has {len(study.trials)} trial(s); pass --resume to continue it, "
            f"or --study NAME for a new one"
        )
    return study, False


def _wait_for_target(study: optuna.Study, timeout_s: float = 30.0) -> dict:
    """The study's recorded target; a study just created by another worker gets it a moment later."""
    deadline = time.monotonic() + timeout_s
    while "target" not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)
    return study.user_attrs.get("target", {})


def check_fingerprint(study: optuna.Study, fp: dict, measures_latency: bool) -> None:
    """Record the machine fingerprint `fp` (`deploybench.platform.fingerprint(threads)`) on `study` when it has
    none, and refuse, with one line, a worker on other hardware when the study measures latency: latencies of
    different machines never share a front. Studies that measure no latency take every worker."""
    recorded = study.user_attrs.get("machine_fingerprint")
    if recorded is None:
        study.set_user_attr("machine_fingerprint", fp)
        recorded = study.user_attrs.get("machine_fingerprint")  # another worker may have written its own first
    if measures_latency and recorded != fp:

        def show(f: dict) -> str:
            return ", ".join(f"{k} {f.get(k)}" for k in ("cpu_model", "gpu", "threads") if k in f)

        raise UserError(
            f"study {study.study_name!r} measures latency on another machine ({show(recorded)}); this "
            f"worker has {show(fp)}: run it there, or name a new study with --study"
        )


def worker_name() -> str:
    """This worker, as trials record it: host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float | Sequence[float]],
    n_trials: int,
    *,
    catch: tuple[type[Exception], ...] = (),
) -> int:
    """Run trials of `objective` in this worker until the study holds `n_trials` finished ones (complete or
    pruned), counting those other workers are running. Before each trial the stale trials of killed workers are
    failed and queued again (heartbeats). Returns how many trials this worker ran.

    Workers that look at the same moment may each start the last trial, so a study can end one trial per extra
    worker over `n_trials`."""
    ran = 0
    while True:
        _fail_stale_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if sum(s in FINISHED or s == TrialState.RUNNING for s in states) >= n_trials:
            return ran
        study.optimize(objective, n_trials=1, catch=catch)
        ran += 1


def same_params(study: optuna.Study, trial: optuna.Trial, params: dict, *, poll_s: float = 1.0) -> FrozenTrial | None:
    """Another finished trial of `study` with exactly `params` (COMPLETE first, then PRUNED), or None.

    While an earlier trial with these params is running in another worker, wait for it, so one recipe is never
    worked on twice at once (only earlier ones: two trials never wait for each other). A killed worker's trial is
    failed by its stale heartbeat meanwhile."""
    while True:
        twins = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number and t.params == params]
        if not any(t.state == TrialState.RUNNING and t.number < trial.number for t in twins):
            done = sorted((t for t in twins if t.state in FINISHED), key=lambda t: t.state != TrialState.COMPLETE)
            return done[0] if done else None
        time.sleep(poll_s)
        _fail_stale_trials(study)
