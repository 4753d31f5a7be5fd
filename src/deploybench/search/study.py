"""`run_search`: create or continue an Optuna study whose trials are recipes of the stages, then summarize it.

The study is named (by default after its model, dataset, backend, batch size and budget) and stored (by default in
the workspace's `studies.db`). Running the same command again, or with `--resume`, continues it up to `trials`
finished trials; several processes given the same study and storage share it, each trial recorded once. A study
records what it searches and the machine it measures on; a worker with other settings or on other hardware is
refused. SIGTERM ends the running trial (recorded as failed and queued again, so the next run makes that recipe
first, its finished stages found in the store) and stops the search with `SearchInterrupted`. The time limit
ends the running trial the same way (SIGALRM), and the search goes on to its summary: the limit bounds the
trials, not just when the last one starts, since one promoted trial can fine-tune for half an hour.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from deploybench.artifacts.formats import load_module
from deploybench.errors import UserError, failure_line, traceback_tail
from deploybench.models import get_model_info
from deploybench.optimize.base import resolve_parent
from deploybench.optimize.export import ensure_onnx
from deploybench.optimize.float_layers import torch_layers
from deploybench.platform import fingerprint, physical_cores
from deploybench.profile.backends import get_backend
from deploybench.search.fidelity import Fidelity
from deploybench.search.measure import LatencyProtocol, PairedTimer
from deploybench.search.objective import OBJECTIVES, SearchContext, run_trial
from deploybench.search.results import change_pts, search_results
from deploybench.search.space import backend_space, check_objectives, menu_seeds, methods_here, search_space
from deploybench.store import Variant, Workspace
from deploybench.store.studies import (
    FINISHED,
    check_fingerprint,
    display_url,
    open_storage,
    open_study,
    run_trials,
    storage_url,
    worker_name,
)


class SearchInterrupted(KeyboardInterrupt):
    """SIGTERM stopped the search; what finished is kept (a KeyboardInterrupt, so no `except Exception` in a stage
    swallows it)."""


class TimeLimitReached(KeyboardInterrupt):
    """`--time-limit` passed while a trial ran: the trial stops as under SIGTERM (failed, its recipe queued again)
    and the search goes on to its summary. A KeyboardInterrupt for the same reason as SearchInterrupted."""


@dataclass(frozen=True)
class SearchSpec:
    """What `deploybench search` is asked (its options, see docs/cli.md)."""

    model: str
    dataset: str
    backend: str
    batch_size: int = 1
    budget_pts: float = 1.0
    trials: int = 24
    time_limit_s: float | None = None
    objectives: tuple[str, ...] = ("latency", "accuracy")
    sampler: str = "nsga2"
    study: str | None = None
    storage: str | None = None
    resume: bool = False
    seed: int = 0
    quick: bool = False  # the short latency protocol (tests; its numbers are not honest)
    menu_seeds: bool = True  # a new study runs `optimize all`'s recipes first (`space.menu_seeds`)
    fidelity: Fidelity = field(default_factory=Fidelity)

    @property
    def study_name(self) -> str:
        return self.study or (
            f"{self.model}-{self.dataset}-{self.backend}-b{self.batch_size}-budget{self.budget_pts:g}"
        )


def check_spec(spec: SearchSpec) -> None:
    """Refuse a search that cannot run, before any work or write: unknown model or backend, a backend this machine
    cannot run, a budget below 0, out-of-range counts, unknown objectives or sampler, a bad storage URL."""
    get_model_info(spec.model)
    cls = get_backend(spec.backend)
    backend_space(spec.backend)
    ok, why = cls.available()
    if not ok:
        raise UserError(f"--backend {spec.backend} cannot run any variant on this machine: {why}")
    if not math.isfinite(spec.budget_pts) or spec.budget_pts < 0:
        raise UserError(f"--budget is the accuracy loss allowed in points, 0 or more; got {spec.budget_pts:g}")
    if spec.batch_size < 1 or spec.trials < 1:
        raise UserError(f"--batch-size and --trials must be 1 or more, got {spec.batch_size} and {spec.trials}")
    if spec.time_limit_s is not None and not spec.time_limit_s > 0:
        raise UserError(f"--time-limit must be above 0, got {spec.time_limit_s:g} s")
    check_objectives(spec.objectives)
    if spec.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {spec.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if not spec.study_name.strip():
        raise UserError("--study needs a name")
    if spec.storage is not None:
        storage_url(spec.storage, ".")


def _nsga2(trials: int, seed: int) -> optuna.samplers.BaseSampler:
    # A generation of a third of the trials: Optuna's default of 50 would leave a 24-trial search all random.
    return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, trials // 3)), seed=seed)


def _tpe(trials: int, seed: int) -> optuna.samplers.BaseSampler:
    # constant_liar: a worker does not propose what another is running; group: the conditional choices.
    return optuna.samplers.TPESampler(
        n_startup_trials=max(3, trials // 4), multivariate=True, group=True, constant_liar=True, seed=seed
    )


SAMPLERS: dict[str, Callable[[int, int], optuna.samplers.BaseSampler]] = {"nsga2": _nsga2, "tpe": _tpe}


def _target(spec: SearchSpec, root: Variant, dims) -> dict:
    """What a study searches (`store.studies.open_study` compares it on every load): every worker agrees on all of
    it, the space and the fidelity schedule included."""
    return dict(
        command="search",
        model=spec.model,
        dataset=spec.dataset,
        backend=spec.backend,
        batch_size=spec.batch_size,
        budget_pts=float(spec.budget_pts),
        objectives=list(spec.objectives),
        root_variant=root.id,
        fidelity=spec.fidelity.to_dict(),
        space=[dict(name=d.name, choices=list(d.choices), low=d.low, high=d.high, step=d.step) for d in dims],
    )


def _describe(target: dict) -> str:
    return (
        f"{target['model']} on {target['dataset']} from variant {target['root_variant']}, {target['backend']} "
        f"batch {target['batch_size']}, budget {target['budget_pts']:g} pts, objectives "
        f"{','.join(target['objectives'])}"
    )


_STORAGE_CODE = (f"{os.sep}sqlalchemy{os.sep}", f"{os.sep}optuna{os.sep}storages{os.sep}")


def _in_storage_call(frame) -> bool:
    """Whether `frame` runs inside the study storage's code, where an exception would leave its session open."""
    while frame is not None:
        if any(part in frame.f_code.co_filename for part in _STORAGE_CODE):
            return True
        frame = frame.f_back
    return False


class _StopSignals:
    """SIGTERM during a trial's work raises SearchInterrupted there (Optuna records the trial as failed, and its
    recipe is queued again); the time limit's SIGALRM raises TimeLimitReached the same way. Inside a call of the
    study's storage, or between trials, either is held: the trial stops at its next step (`check`), or the search
    after the trial being recorded is stored. A held SIGTERM wins over the time limit."""

    def __init__(self):
        self.trial_number: int | None = None
        self.pending = False  # a SIGTERM came
        self.late = False  # the time limit passed

    def handler(self, signum, frame):
        self.pending = True
        if not _in_storage_call(frame):
            self.check()

    def time_up(self, signum, frame):
        self.late = True
        if self.trial_number is not None and _in_storage_call(frame):
            signal.setitimer(signal.ITIMER_REAL, 0.05)  # a trial can wait in storage calls for long: ring again
        elif not _in_storage_call(frame):
            self.check()

    def check(self) -> None:
        """Raise a held SIGTERM, else a passed time limit, inside a trial (called between its steps)."""
        if self.trial_number is None:
            return
        if self.pending:
            raise SearchInterrupted(f"stopped by SIGTERM during trial {self.trial_number}")
        if self.late:
            raise TimeLimitReached(f"time limit reached during trial {self.trial_number}")

    @contextlib.contextmanager
    def installed(self, time_limit_s: float | None = None) -> Iterator[None]:
        """SIGTERM handled, and SIGALRM after `time_limit_s` (None: no limit)."""
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield
            return
        previous = signal.signal(signal.SIGTERM, self.handler)
        if time_limit_s is not None:
            previous_alarm = signal.signal(signal.SIGALRM, self.time_up)
            earlier_timer, started = signal.setitimer(signal.ITIMER_REAL, time_limit_s), time.monotonic()
        try:
            yield
        finally:
            if time_limit_s is not None:  # the caller's own alarm (a test timeout, say) is given back, not lost
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, signal.SIG_DFL if previous_alarm is None else previous_alarm)
                if earlier_timer[0] > 0:
                    left = max(earlier_timer[0] - (time.monotonic() - started), 1e-6)
                    signal.setitimer(signal.ITIMER_REAL, left, earlier_timer[1])
            signal.signal(signal.SIGTERM, previous)


class _Objective:
    """Optuna's objective around `run_trial`: notes the running trial for SIGTERM and the log, records a broken
    recipe's error (the trial fails, the search goes on) and queues an interrupted recipe again."""

    def __init__(self, ctx: SearchContext, gate: _StopSignals, log):
        self.ctx, self.gate, self.log = ctx, gate, log
        self.last: int | None = None
        self.requeued: int | None = None  # the trial whose recipe an interruption queued again

    def _requeue(self, trial: optuna.Trial) -> None:
        """Queue an interrupted trial's recipe (drawn, or queued for it and not drawn yet) again: the next run (any
        worker) makes it first, and its finished stages are found. A recipe of the menu stays one."""
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        params = trial.params or frozen.system_attrs.get("fixed_params")
        if params:
            menu = {"menu_chain": trial.user_attrs["menu_chain"]} if "menu_chain" in trial.user_attrs else {}
            trial.study.enqueue_trial(dict(params), user_attrs={"retry_of": trial.number, **menu})
            self.requeued = trial.number

    def __call__(self, trial: optuna.Trial) -> list[float]:
        self.last = trial.number
        if self.gate.pending:  # it came while Optuna was making this trial: it ends before drawing a recipe
            trial.set_user_attr("error", "stopped by SIGTERM before its recipe was drawn")
            self._requeue(trial)
            raise SearchInterrupted("stopped by SIGTERM")
        if self.gate.late:  # the time limit passed while Optuna was making this trial
            trial.set_user_attr("error", "the time limit passed before its recipe was drawn")
            self._requeue(trial)
            raise TimeLimitReached(f"time limit reached as trial {trial.number} began")
        trial.set_user_attr("worker", worker_name())
        self.gate.trial_number = trial.number
        try:
            return run_trial(trial, self.ctx)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            self.gate.trial_number = None  # a signal from here on is held, not raised inside this handling
            self._requeue(trial)
            raise
        except Exception as exc:  # noqa: BLE001  a broken recipe is recorded as a failed trial; the others go on
            self.gate.trial_number = None
            trial.set_user_attr("error", failure_line(exc))
            if tail := traceback_tail(exc):
                self.log(f"trial {trial.number} failed:{tail}")
            raise
        finally:
            self.gate.trial_number = None


def _trial_line(trial: optuna.trial.FrozenTrial, budget_pts: float) -> str:
    """One line per finished trial."""
    a = trial.user_attrs
    head = f"trial {trial.number} {a.get('recipe', '')}" + (
        f" (optimize all's {a['menu_chain']})" if a.get("menu_chain") else ""
    )
    if a.get("result"):
        r = a["result"]
        ok = "within" if r["val_drop_pts"] <= budget_pts else "over"
        made = "made" if r.get("made_now") else "found in the store"
        how = (f"; {a['promotion']}" if a.get("promotion") else "") + (
            f"; same recipe as trial {a['same_as']}" if a.get("same_as") is not None else ""
        )
        return (
            f"{head}, {r['threads']} thread(s): val top-1 {100 * r['val_top1']:.2f}% "
            f"({change_pts(r['val_drop_pts'])} pts, {ok} budget), {r['speedup']:.2f}x over fp32 "
            f"(p50 {r['latency_ms_p50']:.3f} ms), variant {r['variant_id']} ({made}){how}, "
            f"{a.get('seconds', 0):.0f} s"
        )
    if trial.state == TrialState.PRUNED and a.get("rung0"):
        r = a["rung0"]
        return (
            f"{head}: screened out at rung 0 (val top-1 {100 * r['val_top1']:.2f}% on {r['val_images']} images, "
            f"{r['speedup']:.2f}x): {a.get('promotion')}, {a.get('seconds', 0):.0f} s"
        )
    return f"{head}: {trial.state.name.lower()}" + (f": {a['error']}" if a.get("error") else "")


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's own per-trial log lines off (this module prints its own), its experimental notices too."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def _context(ws: Workspace, spec: SearchSpec, root: Variant, data_dir, threads: int, dims, log) -> SearchContext:
    space = backend_space(spec.backend)
    base = ensure_onnx(ws, root, data_dir) if space.onnx else root
    protocol = LatencyProtocol.quick() if spec.quick else LatencyProtocol()
    timer = PairedTimer(ws, base, spec.backend, spec.batch_size, threads, protocol)
    return SearchContext(
        ws=ws,
        data_dir=str(data_dir),
        root=root,
        base=base,
        space=space,
        dims=dims,
        budget_pts=spec.budget_pts,
        objectives=tuple(spec.objectives),
        fidelity=spec.fidelity,
        max_threads=threads,
        timer=timer,
        log=log,
    )


@contextlib.contextmanager
def _one_opener(url: str) -> Iterator[None]:
    """Workers of one SQLite storage open it one at a time (a lock on its folder, so nothing is written for it):
    Optuna makes its tables on the first open, and two processes making them at once fail ("table alembic_version
    already exists")."""
    if not url.startswith("sqlite"):
        yield
        return
    folder = Path(make_url(url).database).parent
    fd = os.open(folder, os.O_RDONLY) if folder.is_dir() else None  # a missing folder is open_storage's to refuse
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _count(study: optuna.Study) -> int:
    """Trials finished or running (what `run_trials` counts towards the target)."""
    return sum(t.state in FINISHED or t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))


def run_search(ws: Workspace, spec: SearchSpec, data_dir, *, log: Callable[[str], None] = print) -> dict:
    """Run (or continue) the search `spec` on the trained `spec.model` in `ws`, then summarize it.

    Args:
        data_dir: where the dataset lives (the trained variant must be made from its files).
        log: where progress lines go (one per trial).
    Returns:
        the summary of `results.search_results` (front, winner, comparison with `optimize all`), also stored.
    Raises:
        UserError before any work for bad input; SearchInterrupted on SIGTERM.
    """
    check_spec(spec)
    start_s = time.perf_counter()
    root = resolve_parent(ws, spec.model, spec.dataset, None, data_dir)
    threads = physical_cores()
    module = load_module(root)
    has_bn = any("BatchNorm" in type(m).__name__ for m in module.modules())
    layers = torch_layers(module)
    dims = search_space(
        spec.backend,
        max_threads=threads,
        has_batchnorm=has_bn,
        layer_kinds=frozenset().union(*(layer.kinds for layer in layers)),
        layers=len(layers),
    )
    target = _target(spec, root, dims)
    with _quiet_optuna():
        with _one_opener(storage_url(spec.storage, ws.root)):
            store = open_storage(spec.storage, ws.root, must_exist=spec.resume)
            study, created = open_study(
                store,
                spec.study_name,
                directions=[OBJECTIVES[o][0] for o in spec.objectives],
                target=target,
                resume=spec.resume,
                named=spec.study is not None,
            )
            if created and spec.menu_seeds:
                for chain, params in menu_seeds(spec.backend, dims, threads):
                    study.enqueue_trial(params, user_attrs={"menu_chain": chain})
        shown = display_url(store.url)
        check_fingerprint(study, fingerprint(threads), measures_latency=True)
        log(
            f"search: {_describe(target)}: study {spec.study_name!r} in {shown}, {_count(study)} of {spec.trials} "
            f"trials finished or running; methods here: {', '.join(methods_here(spec.backend))}"
        )
        ctx = _context(ws, spec, root, data_dir, threads, dims, log)
        # Stdout is the summary's: what the stages' libraries print (ONNX Runtime's calibrators) goes to stderr.
        with ctx.timer, contextlib.redirect_stdout(sys.stderr):
            ran, failed = _optimize(study, ctx, spec, log)
            summary = search_results(
                ws,
                study,
                ctx,
                spec_dict=dict(
                    study=spec.study_name,
                    storage=shown,
                    storage_in_workspace=spec.storage is None,
                    sampler=spec.sampler,
                    trials=spec.trials,
                    quick=spec.quick,
                    data_dir=str(data_dir),
                ),
                log=log,
            )
    summary.update(ran_this_run=ran, failed_trials_this_run=failed, wall_s=time.perf_counter() - start_s)
    return summary


def _again(spec: SearchSpec) -> str:
    return (
        "run the same command to continue"
        if spec.study or spec.resume
        else "run the same command with --resume to continue"
    )


def _optimize(study: optuna.Study, ctx: SearchContext, spec: SearchSpec, log) -> tuple[int, int]:
    """Run trials, one at a time, until the study holds `spec.trials` finished or running ones (with other workers
    counted), or the time limit has passed. Returns (trials run here, how many of them failed)."""
    study.sampler = SAMPLERS[spec.sampler](spec.trials, spec.seed + len(study.get_trials(deepcopy=False)))
    gate = _StopSignals()
    ctx.between_steps = gate.check
    objective = _Objective(ctx, gate, log)
    deadline = None if spec.time_limit_s is None else time.monotonic() + spec.time_limit_s
    ran = failed = 0
    with gate.installed(spec.time_limit_s):
        while True:
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial no longer counts as running
            count = _count(study)
            if count >= spec.trials:
                break
            if deadline is not None and time.monotonic() > deadline:
                log(f"time limit of {spec.time_limit_s:g} s reached: no new trial started")
                break
            try:  # one trial at a time through `run_trials`, which also fails the trials of dead workers
                run_trials(study, objective, min(spec.trials, count + 1), catch=(Exception,))
            except TimeLimitReached as exc:
                queued = (
                    "its recipe queued again (a resumed study makes it first, its finished stages found in the store)"
                    if objective.requeued is not None
                    else "no recipe was started"
                )
                log(f"{exc}: it stopped and is recorded as failed, {queued}")
                break
            except SearchInterrupted as exc:
                queued = (
                    f"trial {objective.requeued} is recorded as failed and its recipe queued again"
                    if objective.requeued is not None
                    else "no recipe was started"
                )
                raise SearchInterrupted(f"{exc}; what finished is kept, {queued}: {_again(spec)}") from None
            if objective.last is not None:
                trial = study.get_trials(deepcopy=False)[objective.last]
                log(_trial_line(trial, spec.budget_pts))
                ran, failed = ran + 1, failed + (trial.state == TrialState.FAIL)
                objective.last = None
            if gate.pending:
                raise SearchInterrupted(f"stopped by SIGTERM between trials: {_again(spec)}")
        if gate.pending:  # held while the loop decided to stop: the search still ends as interrupted
            raise SearchInterrupted(f"stopped by SIGTERM: {_again(spec)}")
    return ran, failed
