"""`profile_variants`: every (variant, backend, batch size) measured and stored, one transaction per
(variant, backend).

A run is planned (`_plan`: thread count, protocol, backends, environment), each variant prepared (`_prepare`:
its files, its model loading, its static metrics), then the machine's ceilings measured (`_ceilings`) and each
(variant, backend) run in turn (`_run_backend`: one job per batch size, in a child process or here) and recorded
(`_record`: one row per batch size, stored in one transaction, and logged). Every check that can refuse the run
comes before the first write to the store, so a refused run leaves the workspace as it was; a variant's static
metrics are stored with its first rows.

A child process measures in a process group of its own, and dies with this process (Linux's parent-death
signal, even when this one is killed with SIGKILL); while it runs, `WORKERS_DIR/<pid>.json` under the workspace
records it, so that a later run reports a child still running there (it competes for the cores).

A combination a backend cannot run is stored as a row whose metrics are `{"skipped": reason}` (and
`"error": true` when it failed rather than being unsupported), so `profile compare` shows why it is missing.
Backends that are not available on this machine (no GPU) are reported in the log and store nothing: that is
a fact about the machine, not about the variant. A timing that is not stable is measured again before it is
stored (`latency.measure_until_stable`); one still unstable is stored with `stable` False.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import torch

from deploybench.artifacts import formats
from deploybench.artifacts.formats import UnsupportedFormat
from deploybench.data import data_keys
from deploybench.errors import UserError
from deploybench.models.identity import code_changed
from deploybench.platform.env import environment, physical_cores, same_setup
from deploybench.platform.process import child_dies_with_parent, parent_pid, process_argv
from deploybench.profile import machine
from deploybench.profile.accuracy import DEFAULT_BATCH_SIZES, backend_accuracy, stage_accuracy, test_split
from deploybench.profile.backends import available_backends, get_backend
from deploybench.profile.backends.base import BackendSkip
from deploybench.profile.compare import latest_measurements
from deploybench.profile.latency import Protocol, measure_latency, measure_until_stable
from deploybench.profile.memory import PeakRSS
from deploybench.profile.static import input_shape, root_config, static_metrics
from deploybench.store import Variant, Workspace
from deploybench.store.atomic import atomic_write_text

CHILD_TIMEOUT_S = 3600
WORKER_MODULE = "deploybench.profile.worker"
WORKERS_DIR = ".profiling"  # under the workspace: `<pid>.json` for each running child (`_record_worker`)
_STATIC_KEYS = (
    "params",
    "macs",
    "flops",
    "size_bytes",
    "files_bytes",
    "macs_source",
    "macs_unavailable",
    "skipped_ops",
)


def measure_combo(
    workspace: str,
    variant_id: str,
    backend: str,
    batch_size: int,
    threads: int,
    protocol: dict,
    data_dir: str,
    with_accuracy: bool,
) -> dict:
    """Load one variant on one backend for one batch size; time it (measured again while not stable, see
    `measure_until_stable`), take its memory peak and (optionally) its test accuracy. Returns metrics; raises
    UnsupportedFormat / BackendSkip for a skip."""
    ws = Workspace(workspace, create=False)
    variant = ws.get_variant(variant_id)
    config = root_config(ws, variant)
    torch.manual_seed(0)
    batch = torch.randn(batch_size, *input_shape(config))
    cls = get_backend(backend)
    cls.preload()
    impl = cls()
    try:
        with PeakRSS() as rss:
            impl.load(variant, batch_size, threads)
            timing = Protocol(**protocol)
            metrics = measure_until_stable(lambda: measure_latency(impl, batch, batch_size, timing), timing)
        metrics.update(impl.run_facts())
        gpu_peak = impl.peak_memory_bytes()
        metrics.update(
            peak_mem_bytes=gpu_peak if gpu_peak is not None else rss.growth_bytes,
            peak_mem_kind="cuda_max_allocated" if gpu_peak is not None else "rss_growth",
        )
        if with_accuracy:
            test = test_split(config.get("dataset", variant.dataset), data_dir, bool(config.get("transfer")))
            metrics.update(backend_accuracy(impl, test, batch_size), accuracy_batch_size=batch_size)
    finally:
        impl.close()
    return metrics


def measure_combo_safe(**job) -> dict:
    """`measure_combo` with skips turned into `{"skipped": reason}` and a refused artifact (a `UserError`)
    into `{"user_error": message}` (what the worker process returns)."""
    try:
        return dict(metrics=measure_combo(**job))
    except (UnsupportedFormat, BackendSkip) as exc:
        return dict(skipped=str(exc))
    except UserError as exc:
        return dict(user_error=str(exc))


def checked_batch_sizes(batch_sizes: Iterable[int]) -> list[int]:
    """The distinct batch sizes, ascending; none, or one below 1, is a UserError."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UserError(f"batch sizes must be integers of 1 or more, got {', '.join(map(str, sizes)) or 'none'}")
    return sizes


def _preflight(variants: list[Variant]) -> None:
    """Refuse a run over a spoiled artifact before anything is measured or stored: every file a variant lists
    must be there, and every ONNX file is checked (malformed, external data outside its folder) by
    `formats.onnx_path`."""
    for variant in variants:
        _check_files(variant)
        if variant.format in formats.ONNX_FORMATS:
            formats.onnx_path(variant)


def _check_files(variant: Variant) -> None:
    """Refuse a variant one of whose listed files is missing (whatever its format)."""
    missing = [name for name in variant.files if not (variant.path / name).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of its files)" if len(missing) > 1 else ""
        raise UserError(
            f"variant {variant.id}: {variant.path / missing[0]} is missing{more}; the variant is damaged, make it again"
        )


def _check_loads(variant: Variant) -> None:
    """Refuse a variant whose model does not load (a UserError: corrupt, truncated, not these weights) before
    anything is stored. ONNX files are checked by `_preflight`; formats no torch loader reads, by no backend."""
    if variant.format not in formats.torch_formats():
        return
    try:
        formats.load_module(variant)
    except UserError:
        raise
    except Exception:  # not a refusal: the backend's load fails alike, and that is recorded as a failed row
        pass


def _in_child(job: dict) -> dict:
    """Run `measure_combo_safe(**job)` in a fresh interpreter (memory isolation, crash containment)."""
    with tempfile.TemporaryDirectory(prefix="deploybench-profile-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        argv = [sys.executable, "-m", WORKER_MODULE, str(job_path), str(result_path)]
        proc = _run_worker(argv, Path(job["workspace"]), dict(os.environ, OMP_NUM_THREADS=str(job["threads"])))
        if proc is None:
            return dict(
                error=f"profiling process ran past its {CHILD_TIMEOUT_S} s limit and was stopped", timed_out=True
            )
        if not result_path.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            return dict(error=f"profiling process exited with status {proc.returncode}: {' | '.join(tail)}")
        return json.loads(result_path.read_text())


def _run_worker(argv: list[str], root: Path, env: dict) -> subprocess.CompletedProcess | None:
    """Run the worker to its end, in a process group of its own and recorded under the workspace `root` while it
    runs; None when it ran past `CHILD_TIMEOUT_S`. However this call ends (a timeout, Ctrl-C, SIGTERM), the
    worker and whatever it started are killed: a terminal's Ctrl-C no longer reaches its own group."""
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=child_dies_with_parent(),
    )
    try:
        _record_worker(root, proc.pid, argv, parent=os.getpid())
        try:
            out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    finally:
        _stop_group(proc)
        _forget_worker(root, proc.pid)


def _stop_group(proc: subprocess.Popen) -> None:
    """Kill the worker's process group unless the worker was reaped (its pid, which names the group, is ours
    only until then), reap it and close its pipes."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        pipe.close()


def _record_worker(root: Path, pid: int, argv: list[str], parent: int) -> None:
    """Write `root/WORKERS_DIR/<pid>.json` atomically: the child's pid, its parent's and its command line, which
    tells a process that reuses the pid from the child (`_other_workers`)."""
    path = Path(root) / WORKERS_DIR / f"{pid}.json"
    text = json.dumps(dict(pid=pid, parent=parent, argv=list(argv)))
    for attempt in range(3):
        try:
            atomic_write_text(path, text)
            return
        except FileNotFoundError:  # another run removed the folder, found empty, between its making and the write
            if attempt == 2:
                raise


def _forget_worker(root: Path, pid: int) -> None:
    """Remove a child's record, and the folder once it holds none."""
    folder = Path(root) / WORKERS_DIR
    with contextlib.suppress(OSError):  # a record left behind is removed by the next run, its process gone
        (folder / f"{pid}.json").unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: another run's children are recorded there
        folder.rmdir()


def _other_workers(root: Path) -> list[dict]:
    """The records of children of other runs still running in the workspace `root` (the process of the pid runs
    the recorded command line); the records of those that ended are removed. None where /proc is not there."""
    folder = Path(root) / WORKERS_DIR
    if not folder.is_dir() or process_argv(os.getpid()) is None:
        return []
    running = []
    for path in sorted(folder.glob("*.json")):
        if path.is_symlink() or not path.is_file():  # not written by a run (a FIFO would block the read)
            continue
        record = _read_record(path)
        if record is not None and process_argv(record["pid"]) == record["argv"]:
            running.append(record)
        else:
            with contextlib.suppress(OSError):  # a read-only workspace: the record stays, nothing else is wrong
                path.unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
    return running


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
        return record if isinstance(record.get("pid"), int) and isinstance(record.get("argv"), list) else None
    except (OSError, ValueError, AttributeError):  # half a file from a writer without rename, or not ours
        return None


def _warn_of_other_workers(root: Path, log) -> None:
    """One warning line naming the children of other runs still running here: they compete for the cores."""
    running = _other_workers(root)
    if not running:
        return
    parts = [
        f"pid {r['pid']} (of the run with pid {r['parent']})"
        if parent_pid(r["pid"]) == r.get("parent")
        else f"pid {r['pid']} (its run is gone: `kill {r['pid']}` stops it)"
        for r in running
    ]
    log(
        f"warning: profiling process(es) of other runs still running in this workspace: {', '.join(parts)}; "
        f"they compete for the cores, latencies will be inflated"
    )


def _resolve_backends(names: Iterable[str] | None, log) -> list[str]:
    if names is None:
        return available_backends()
    chosen = []
    for name in names:
        ok, why = get_backend(name).available()
        if ok:
            chosen.append(name)
        else:
            log(f"{name}: unavailable here ({why}); skipped")
    return chosen


@dataclass(frozen=True)
class RunPlan:
    """What every combination of one `profile_variants` run shares."""

    threads: int
    batch_sizes: list[int]  # descending: accuracy is measured once, at the largest batch
    protocol: dict  # `Protocol` as a dict, as recorded in each row
    backends: list[str]
    env: dict  # `environment(threads)`
    peaks: dict  # device -> `machine.machine_peak`, filled in by `_ceilings` once every check has passed
    data_dir: str
    isolate: bool


@dataclass(frozen=True)
class RowContext:
    """What the rows of one (variant, backend) share, besides each batch size's result."""

    variant: Variant
    cls: type
    threads: int
    env: dict
    isolated: bool
    protocol: dict
    peak: dict  # the device's `machine.machine_peak`
    dtype: str | None  # `machine.compute_dtype`
    scalars: dict  # static metrics and data keys


@dataclass(frozen=True)
class VariantWork:
    """One variant's part of a run, settled before anything is stored (`_prepare`)."""

    variant: Variant
    not_measured: str | None = None  # why the variant is left out
    kept: dict = field(default_factory=dict)  # {backend: rows} kept from an earlier run (reuse)
    to_measure: list[str] = field(default_factory=list)  # the backends to measure it on
    static: dict | None = None  # `static_metrics`, stored with its first rows; None when nothing is measured
    scalars: dict = field(default_factory=dict)  # static metrics and data keys of its rows
    dtype: str | None = None  # `machine.compute_dtype`


def profile_variants(
    ws: Workspace,
    variants: list[Variant],
    backends: Iterable[str] | None = None,
    *,
    batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
    threads: int | None = None,
    quick: bool = False,
    data_dir: str | os.PathLike = "data",
    isolate: bool = True,
    reuse: bool = False,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Measure every variant on every backend and batch size, and store the rows.

    Args: backends: names (default: every available one); threads: CPU threads (default: physical cores);
    quick: the short latency protocol (the ceilings behind `pct_of_peak` are the full ones all the same);
    isolate: measure each combination in a child process (memory isolation; False runs in this process, for
    tests); reuse: keep a (variant, backend) whose rows can stand for a new measurement (see `_reusable`)
    instead of measuring it again (the main job, so that a long run picks up where it stopped); log: progress
    lines and warnings.
    Returns the rows of this run: those stored now (as given to `Workspace.add_measurements`) and those kept
    (as read from the store, with their `id` and `created_at`).
    """
    plan = _plan(ws, variants, backends, batch_sizes, threads, quick, data_dir, isolate, log)
    latest = latest_measurements(ws) if reuse else None  # read once: this run only adds rows for other pairs
    work = [_prepare(ws, variant, plan, latest) for variant in variants]  # every refusal comes by here
    _warn_of_other_workers(ws.root, log)
    plan = replace(plan, peaks=_ceilings(ws, plan))  # the first write to the store
    stored: list[dict] = []
    for item in work:
        stored += _profile_variant(ws, item, plan, log)
    return stored


def _plan(
    ws: Workspace,
    variants: list[Variant],
    backends: Iterable[str] | None,
    batch_sizes: Iterable[int],
    threads: int | None,
    quick: bool,
    data_dir,
    isolate: bool,
    log,
) -> RunPlan:
    """Check the inputs and settle what the run shares, the ceilings aside (`_ceilings`); writes nothing."""
    threads = threads or physical_cores()
    sizes = checked_batch_sizes(batch_sizes)[::-1]
    _preflight(variants)
    protocol = asdict(Protocol.quick() if quick else Protocol())
    names = _resolve_backends(backends, log)
    env = environment(threads)
    _warn_if_loaded(env, log)
    return RunPlan(threads, sizes, protocol, names, env, {}, str(data_dir), isolate)


def _ceilings(ws: Workspace, plan: RunPlan) -> dict:
    """{device: `machine.machine_peak`} of the plan's backends; measures and stores one the workspace lacks."""
    devices = sorted({get_backend(n).device for n in plan.backends})
    return {dev: machine.machine_peak(ws, dev, plan.threads) for dev in devices}


def _warn_if_loaded(env: dict, log) -> None:
    cpus = os.cpu_count() or 1
    if env["load_avg_1m"] is not None and env["load_avg_1m"] > 0.5 * cpus:
        log(
            f"warning: load average {env['load_avg_1m']} on {cpus} CPUs: other work competes for the "
            f"cores, latencies will be inflated (recorded in the environment)"
        )


def _prepare(ws: Workspace, variant: Variant, plan: RunPlan, latest: dict | None) -> VariantWork:
    """What to do with one variant (its rows to keep when `latest` is given: reuse), after the checks that can
    refuse it: its model must load, and its static metrics are computed. Writes nothing."""
    if code_changed(variant.config):  # its weights belong to code that is gone: nothing honest to measure
        return VariantWork(variant, not_measured="the code of its user architecture changed since it was made")
    data = data_keys(variant.dataset, plan.data_dir)  # accuracy is measured on these files
    kept = _kept(latest, variant, plan, data) if latest is not None else {}
    to_measure = [name for name in plan.backends if name not in kept]
    if not to_measure:  # nothing to measure: no model loaded, no MAC count
        return VariantWork(variant, kept=kept)
    static = static_metrics(ws, variant)
    if static.get("macs_source") != variant.id:  # the count loaded another variant's module, or failed
        _check_loads(variant)
    scalars = dict({k: static[k] for k in _STATIC_KEYS if k in static}, **data)
    return VariantWork(
        variant,
        kept=kept,
        to_measure=to_measure,
        static=static,
        scalars=scalars,
        dtype=machine.compute_dtype(variant, ws.lineage(variant)),
    )


def _profile_variant(ws: Workspace, work: VariantWork, plan: RunPlan, log) -> list[dict]:
    """The rows of one prepared variant on every backend of `plan`: kept ones and new ones, measured and stored
    (its static metrics just before its first rows)."""
    variant = work.variant
    if work.not_measured:
        log(f"{_label(variant)}: not measured, {work.not_measured}")
        return []
    rows: list[dict] = []
    for name, old in work.kept.items():
        log(f"{_label(variant)} {name}: kept from an earlier run of this code")
        rows += old
    for i, name in enumerate(work.to_measure):
        cls = get_backend(name)
        ctx = RowContext(
            variant,
            cls,
            plan.threads,
            plan.env,
            plan.isolate,
            plan.protocol,
            plan.peaks.get(cls.device) or {},
            work.dtype,
            work.scalars,
        )
        results, accuracy = _run_backend(ws, ctx, plan)
        if i == 0:  # after its first measurement, which may still refuse the variant
            ws.update_metrics(variant.id, {"profile_static": work.static})
        rows += _record(ws, ctx, results, accuracy, log)
    return rows


def _kept(latest: dict, variant: Variant, plan: RunPlan, data: dict) -> dict[str, list[dict]]:
    """{backend: rows} of the backends whose stored rows can stand for a new measurement (`_reusable`)."""
    kept = {name: _reusable(latest, variant, get_backend(name), plan, data) for name in plan.backends}
    return {name: rows for name, rows in kept.items() if rows}


def _run_backend(ws: Workspace, ctx: RowContext, plan: RunPlan) -> tuple[dict, dict | None]:
    """({batch size: result of `measure_combo_safe` or an error}, accuracy keys or None) of one (variant,
    backend). The largest batch carries the accuracy pass, unless the variant's stage made that very pass
    (`stage_accuracy`); when its process runs out of time, the smaller ones are timed without it (a smaller batch
    only makes that pass slower)."""
    ok, why = ctx.cls.supports(ctx.variant)
    if not ok:
        return {b: dict(skipped=why, job_seconds=0.0) for b in plan.batch_sizes}, None  # nothing ran
    made = stage_accuracy(ctx.variant, ctx.cls.name, plan.batch_sizes[0], plan.env, ctx.scalars.get("data_sha256"))
    results, accuracy, ran_out = {}, made or None, None  # ran_out: the batch size whose process ran out of time
    for b in plan.batch_sizes:
        job = dict(
            workspace=str(ws.root),
            variant_id=ctx.variant.id,
            backend=ctx.cls.name,
            batch_size=b,
            threads=plan.threads,
            protocol=plan.protocol,
            data_dir=plan.data_dir,
            with_accuracy=accuracy is None and not ran_out,
        )
        started = time.perf_counter()
        res = results[b] = dict(_run_job(job, plan.isolate), job_seconds=time.perf_counter() - started)
        accuracy = accuracy or _accuracy_of(res)
        if res.get("timed_out") and accuracy is None and not ran_out:
            ran_out = b
    if ran_out and accuracy is None:
        accuracy = dict(
            accuracy_unmeasured=f"the batch-{ran_out} process, which had the accuracy pass to make, "
            f"ran past its {CHILD_TIMEOUT_S} s limit"
        )
    return results, accuracy


def _run_job(job: dict, isolate: bool) -> dict:
    """The result of one combination's job; a failure is returned as `{"error": ...}` (the run goes on), a
    refused input (`user_error`) raised as a UserError."""
    try:
        res = _in_child(job) if isolate else measure_combo_safe(**job)
    except Exception as exc:  # a failure of one combination is recorded; the run goes on
        res = dict(error=f"{type(exc).__name__}: {exc}")
    if "user_error" in res:  # bad input, not a measurement: stop with its message
        raise UserError(res["user_error"])
    return res


def _accuracy_of(res: dict) -> dict | None:
    metrics = res.get("metrics") or {}
    if metrics.get("accuracy_top1") is None:
        return None
    keys = ("accuracy_top1", "accuracy_top5", "test_images", "accuracy_batch_size")
    return dict({k: metrics[k] for k in keys}, accuracy_source="profile")


def _record(ws: Workspace, ctx: RowContext, results: dict, accuracy: dict | None, log) -> list[dict]:
    """Store the rows of one (variant, backend) in one transaction and log each (with a warning for a row whose
    `pct_of_peak` was refused). Returns the rows."""
    rows = [_row(ctx, b, results[b], accuracy) for b in sorted(results)]
    ws.add_measurements(rows)
    for r in rows:
        log(_describe(ctx.variant, r))
        if r["metrics"].get("pct_of_peak_invalid"):
            log(
                f"warning: {_label(ctx.variant)} {r['backend']} batch {r['batch_size']}: % of peak not stored, "
                f"{r['metrics']['pct_of_peak_invalid']}"
            )
    return rows


def _reusable(latest: dict, variant: Variant, cls, plan: RunPlan, data: dict) -> list[dict] | None:
    """The rows `profile compare` shows for (variant, backend) (`latest`: its `latest_measurements`), one per
    batch size of `plan`, when every one can stand for a new measurement: taken with the plan's threads,
    protocol, memory isolation and data files (`data`: `data_keys`), by the same committed code on the same
    machine (`same_setup`), or a skip because the backend cannot run this variant's format. Else None."""
    rows = [latest.get((variant.id, cls.name, b)) for b in sorted(plan.batch_sizes)]
    if any(r is None or r["threads"] != plan.threads or not same_setup(r["environment"], plan.env) for r in rows):
        return None
    unsupported = not cls.supports(variant)[0]
    for r in rows:
        m = r["metrics"]
        if "skipped" in m and not (unsupported and not m.get("error")):
            return None  # a failure, or a skip that depends on the moment (a provider that fell back)
        if "skipped" not in m and (
            m.get("protocol") != plan.protocol
            or m.get("memory_isolated") != plan.isolate
            or m.get("data_sha256") != data.get("data_sha256")
        ):
            return None
    return rows


def _row(ctx: RowContext, batch_size: int, res: dict, accuracy: dict | None) -> dict:
    """The row to store for one batch size's result `res` (metrics, a skip or an error)."""
    if "metrics" in res:
        dtype = _row_dtype(ctx.dtype, res["metrics"].get("runtime_compute_dtype"))
        metrics = dict(
            res["metrics"],
            **(accuracy or {}),
            **ctx.scalars,
            compute_dtype=dtype,
            memory_isolated=ctx.isolated,
            protocol=ctx.protocol,
        )
        metrics.update(
            machine.peak_metrics(metrics.get("macs"), batch_size, metrics["latency_ms_p50"], ctx.peak, dtype)
        )
    elif "skipped" in res:
        metrics = dict(skipped=res["skipped"])
    else:
        metrics = dict(skipped=f"failed: {res.get('error')}", error=True)
    if "job_seconds" in res:  # the wall time of the measuring process, its accuracy pass included
        metrics["job_seconds"] = res["job_seconds"]
    return dict(
        variant_id=ctx.variant.id,
        backend=ctx.cls.name,
        device=ctx.cls.device,
        batch_size=batch_size,
        threads=ctx.threads,
        metrics=metrics,
        environment=ctx.env,
    )


def _row_dtype(variant_dtype: str | None, runtime_dtype: str | None) -> str | None:
    """The dtype a row computed in: the variant's, unless the runtime lowered an fp32 (or unrecorded) variant to
    a reduced precision of its own accord (OpenVINO runs fp32 in bf16 on CPUs with native bf16), which is then
    the dtype its % of peak is measured against."""
    if runtime_dtype and variant_dtype in (None, "float32"):
        return runtime_dtype
    return variant_dtype


def _label(variant: Variant) -> str:
    return f"{variant.model}/{variant.dataset} {variant.chain} [{variant.id[:8]}]"


def _describe(variant: Variant, row: dict) -> str:
    head = f"{_label(variant)} {row['backend']} batch {row['batch_size']}"
    m = row["metrics"]
    if "skipped" in m:
        return f"{head}: skipped ({m['skipped']})"
    lo, hi = m["latency_ms_ci95"]
    from_stage = " (its stage's pass)" if m.get("accuracy_source") == "stage" else ""
    acc = (
        f", top-1 {100 * m['accuracy_top1']:.2f}%{from_stage}"
        if m.get("accuracy_top1") is not None
        else f", accuracy not measured ({m['accuracy_unmeasured']})"
        if m.get("accuracy_unmeasured")
        else ""
    )
    unstable = "" if m["stable"] else f" (unstable after {m.get('attempts', 1)} attempt(s))"
    return (
        f"{head}: p50 {m['latency_ms_p50']:.3f} ms [{lo:.3f}, {hi:.3f}]{unstable}, {m['throughput_per_s']:.0f}/s{acc}"
    )
