"""`profile_variants`: every (variant, backend, batch size) measured and stored, one transaction per
(variant, backend).

A run is planned (`_plan`: thread count, protocol, backends, environment, the machine's ceilings), run one
(variant, backend) at a time (`_run_backend`: one job per batch size, in a child process or here) and recorded
(`_record`: one row per batch size, stored in one transaction, and logged).

A combination a backend cannot run is stored as a row whose metrics are `{"skipped": reason}` (and
`"error": true` when it failed rather than being unsupported), so `profile compare` shows why it is missing.
Backends that are not available on this machine (no GPU) are reported in the log and store nothing: that is
a fact about the machine, not about the variant. A timing that is not stable is measured again before it is
stored (`latency.measure_until_stable`); one still unstable is stored with `stable` False.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from deploybench.artifacts import formats
from deploybench.artifacts.formats import UnsupportedFormat
from deploybench.data import data_keys
from deploybench.errors import UserError
from deploybench.models.identity import code_changed
from deploybench.platform.env import environment, physical_cores, same_setup
from deploybench.profile import machine
from deploybench.profile.accuracy import backend_accuracy, test_split
from deploybench.profile.backends import available_backends, get_backend
from deploybench.profile.backends.base import BackendSkip
from deploybench.profile.compare import latest_measurements
from deploybench.profile.latency import Protocol, measure_latency, measure_until_stable
from deploybench.profile.memory import PeakRSS
from deploybench.profile.static import input_shape, root_config, static_metrics
from deploybench.store import Variant, Workspace

DEFAULT_BATCH_SIZES = (1, 64)
CHILD_TIMEOUT_S = 3600
_STATIC_KEYS = ("params", "macs", "flops", "size_bytes", "files_bytes", "macs_source", "macs_unavailable",
                "skipped_ops")


def measure_combo(workspace: str, variant_id: str, backend: str, batch_size: int, threads: int, protocol: dict,
                  data_dir: str, with_accuracy: bool) -> dict:
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
        gpu_peak = impl.peak_memory_bytes()
        metrics.update(peak_mem_bytes=gpu_peak if gpu_peak is not None else rss.growth_bytes,
                       peak_mem_kind="cuda_max_allocated" if gpu_peak is not None else "rss_growth")
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
    """Refuse a run over a spoiled artifact before anything is measured or stored: every ONNX file is checked
    (malformed, external data outside its folder) by `formats.onnx_path`."""
    for variant in variants:
        if variant.format in formats.ONNX_FORMATS:
            formats.onnx_path(variant)


def _in_child(job: dict) -> dict:
    """Run `measure_combo_safe(**job)` in a fresh interpreter (memory isolation, crash containment)."""
    with tempfile.TemporaryDirectory(prefix="deploybench-profile-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]))
        try:
            proc = subprocess.run([sys.executable, "-m", "deploybench.profile.worker", str(job_path),
                                   str(result_path)], env=env, capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # run() has killed the child
            return dict(error=f"profiling process ran past its {CHILD_TIMEOUT_S} s limit and was stopped",
                        timed_out=True)
        if not result_path.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
            return dict(error=f"profiling process exited with status {proc.returncode}: {' | '.join(tail)}")
        return json.loads(result_path.read_text())


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
    peaks: dict  # device -> `machine.machine_peak`
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


def profile_variants(ws: Workspace, variants: list[Variant], backends: Iterable[str] | None = None, *,
                     batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES, threads: int | None = None,
                     quick: bool = False, data_dir: str | os.PathLike = "data", isolate: bool = True,
                     reuse: bool = False, log: Callable[[str], None] = print) -> list[dict]:
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
    stored: list[dict] = []
    for variant in variants:
        stored += _profile_variant(ws, variant, plan, latest, log)
    return stored


def _plan(ws: Workspace, variants: list[Variant], backends: Iterable[str] | None, batch_sizes: Iterable[int],
          threads: int | None, quick: bool, data_dir, isolate: bool, log) -> RunPlan:
    """Check the inputs and settle what the run shares; measures a ceiling the workspace lacks."""
    threads = threads or physical_cores()
    sizes = checked_batch_sizes(batch_sizes)[::-1]
    _preflight(variants)
    protocol = asdict(Protocol.quick() if quick else Protocol())
    names = _resolve_backends(backends, log)
    env = environment(threads)
    _warn_if_loaded(env, log)
    peaks = {dev: machine.machine_peak(ws, dev, threads) for dev in sorted({get_backend(n).device for n in names})}
    return RunPlan(threads, sizes, protocol, names, env, peaks, str(data_dir), isolate)


def _warn_if_loaded(env: dict, log) -> None:
    cpus = os.cpu_count() or 1
    if env["load_avg_1m"] is not None and env["load_avg_1m"] > 0.5 * cpus:
        log(f"warning: load average {env['load_avg_1m']} on {cpus} CPUs: other work competes for the "
            f"cores, latencies will be inflated (recorded in the environment)")


def _profile_variant(ws: Workspace, variant: Variant, plan: RunPlan, latest: dict | None, log) -> list[dict]:
    """The rows of one variant on every backend of `plan`: kept ones (when `latest` is given: reuse) and new
    ones, measured and stored."""
    if code_changed(variant.config):  # its weights belong to code that is gone: nothing honest to measure
        log(f"{_label(variant)}: not measured, the code of its user architecture changed since it was made")
        return []
    data = data_keys(variant.dataset, plan.data_dir)  # accuracy is measured on these files
    kept = _kept(latest, variant, plan, data) if latest is not None else {}
    rows: list[dict] = []
    for name, old in kept.items():
        log(f"{_label(variant)} {name}: kept from an earlier run of this code")
        rows += old
    to_measure = [name for name in plan.backends if name not in kept]
    if not to_measure:
        return rows  # nothing to measure: no model loaded, no MAC count, no write to the store
    static = static_metrics(ws, variant)
    ws.update_metrics(variant.id, {"profile_static": static})
    scalars = dict({k: static[k] for k in _STATIC_KEYS if k in static}, **data)
    dtype = machine.compute_dtype(variant, ws.lineage(variant))
    for name in to_measure:
        cls = get_backend(name)
        ctx = RowContext(variant, cls, plan.threads, plan.env, plan.isolate, plan.protocol,
                         plan.peaks.get(cls.device) or {}, dtype, scalars)
        results, accuracy = _run_backend(ws, ctx, plan)
        rows += _record(ws, ctx, results, accuracy, log)
    return rows


def _kept(latest: dict, variant: Variant, plan: RunPlan, data: dict) -> dict[str, list[dict]]:
    """{backend: rows} of the backends whose stored rows can stand for a new measurement (`_reusable`)."""
    kept = {name: _reusable(latest, variant, get_backend(name), plan, data) for name in plan.backends}
    return {name: rows for name, rows in kept.items() if rows}


def _run_backend(ws: Workspace, ctx: RowContext, plan: RunPlan) -> tuple[dict, dict | None]:
    """({batch size: result of `measure_combo_safe` or an error}, accuracy keys or None) of one (variant,
    backend). The largest batch carries the accuracy pass; when its process runs out of time, the smaller ones
    are timed without it (a smaller batch only makes that pass slower)."""
    ok, why = ctx.cls.supports(ctx.variant)
    if not ok:
        return {b: dict(skipped=why) for b in plan.batch_sizes}, None
    results, accuracy, ran_out = {}, None, None  # ran_out: the batch size whose process ran out of time
    for b in plan.batch_sizes:
        job = dict(workspace=str(ws.root), variant_id=ctx.variant.id, backend=ctx.cls.name, batch_size=b,
                   threads=plan.threads, protocol=plan.protocol, data_dir=plan.data_dir,
                   with_accuracy=accuracy is None and not ran_out)
        res = results[b] = _run_job(job, plan.isolate)
        accuracy = accuracy or _accuracy_of(res)
        if res.get("timed_out") and accuracy is None and not ran_out:
            ran_out = b
    if ran_out and accuracy is None:
        accuracy = dict(accuracy_unmeasured=f"the batch-{ran_out} process, which had the accuracy pass to make, "
                                            f"ran past its {CHILD_TIMEOUT_S} s limit")
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
    return {k: metrics[k] for k in ("accuracy_top1", "accuracy_top5", "test_images", "accuracy_batch_size")}


def _record(ws: Workspace, ctx: RowContext, results: dict, accuracy: dict | None, log) -> list[dict]:
    """Store the rows of one (variant, backend) in one transaction and log each (with a warning for a row whose
    `pct_of_peak` was refused). Returns the rows."""
    rows = [_row(ctx, b, results[b], accuracy) for b in sorted(results)]
    ws.add_measurements(rows)
    for r in rows:
        log(_describe(ctx.variant, r))
        if r["metrics"].get("pct_of_peak_invalid"):
            log(f"warning: {_label(ctx.variant)} {r['backend']} batch {r['batch_size']}: % of peak not stored, "
                f"{r['metrics']['pct_of_peak_invalid']}")
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
        if "skipped" not in m and (m.get("protocol") != plan.protocol or m.get("memory_isolated") != plan.isolate
                                   or m.get("data_sha256") != data.get("data_sha256")):
            return None
    return rows


def _row(ctx: RowContext, batch_size: int, res: dict, accuracy: dict | None) -> dict:
    """The row to store for one batch size's result `res` (metrics, a skip or an error)."""
    if "metrics" in res:
        metrics = dict(res["metrics"], **(accuracy or {}), **ctx.scalars, compute_dtype=ctx.dtype,
                       memory_isolated=ctx.isolated, protocol=ctx.protocol)
        metrics.update(machine.peak_metrics(metrics.get("macs"), batch_size, metrics["latency_ms_p50"], ctx.peak,
                                            ctx.dtype))
    elif "skipped" in res:
        metrics = dict(skipped=res["skipped"])
    else:
        metrics = dict(skipped=f"failed: {res.get('error')}", error=True)
    return dict(variant_id=ctx.variant.id, backend=ctx.cls.name, device=ctx.cls.device, batch_size=batch_size,
                threads=ctx.threads, metrics=metrics, environment=ctx.env)


def _label(variant: Variant) -> str:
    return f"{variant.model}/{variant.dataset} {variant.chain} [{variant.id[:8]}]"


def _describe(variant: Variant, row: dict) -> str:
    head = f"{_label(variant)} {row['backend']} batch {row['batch_size']}"
    m = row["metrics"]
    if "skipped" in m:
        return f"{head}: skipped ({m['skipped']})"
    lo, hi = m["latency_ms_ci95"]
    acc = f", top-1 {100 * m['accuracy_top1']:.2f}%" if m.get("accuracy_top1") is not None else \
        f", accuracy not measured ({m['accuracy_unmeasured']})" if m.get("accuracy_unmeasured") else ""
    unstable = "" if m["stable"] else f" (unstable after {m.get('attempts', 1)} attempt(s))"
    return f"{head}: p50 {m['latency_ms_p50']:.3f} ms [{lo:.3f}, {hi:.3f}]{unstable}, " \
           f"{m['throughput_per_s']:.0f}/s{acc}"
