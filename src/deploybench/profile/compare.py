"""`profile compare`: one row per (variant, backend, batch size) from the store, with speed-up and accuracy
change against the parent, Pareto membership, the "no real speed-up" flag and winner lines.

The baseline of a row is the nearest ancestor measured on the same backend and batch size; when no ancestor
runs on that backend (an ONNX export on ort-cpu), the trained root on the same device and batch size (its eager
torch row first). `no_real_speedup` is set when a variant has fewer MACs or fewer bytes than its baseline but
its latency interval is not entirely below the baseline's.
"""
from __future__ import annotations

import csv
import io
import json

from deploybench.profile.pareto import DEFAULT_OBJECTIVES, mark_pareto
from deploybench.store import Workspace

KEYS = ("model", "dataset", "variant", "stages", "chain", "format", "backend", "device", "batch_size", "threads",
        "accuracy_top1", "accuracy_top5", "params", "macs", "flops", "size_bytes", "latency_ms_p50",
        "latency_ms_p90", "latency_ms_p99", "latency_ms_ci95", "throughput_per_s", "peak_mem_bytes", "pct_of_peak",
        "stable", "pareto", "baseline", "speedup", "accuracy_change", "no_real_speedup", "skipped", "data_sha256")
_METRIC_KEYS = ("accuracy_top1", "accuracy_top5", "test_images", "params", "macs", "flops", "size_bytes",
                "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_ci95", "throughput_per_s",
                "peak_mem_bytes", "pct_of_peak", "stable", "runs", "compute_dtype", "data_sha256")
_EAGER = {"cpu": "torch-cpu", "cuda": "torch-cuda"}


def latest_measurements(ws: Workspace) -> dict[tuple[str, str, int], dict]:
    """The most recent stored row per (variant id, backend, batch size)."""
    latest = {}
    for m in ws.measurements():  # ordered by id: later rows replace earlier ones
        latest[(m["variant_id"], m["backend"], m["batch_size"])] = m
    return latest


def compare_rows(ws: Workspace, models: list[str] | None = None, backend: str | None = None,
                 dataset: str | None = None, include_skipped: bool = True) -> list[dict]:
    """Rows for `profile compare` (keys: `KEYS`, plus `test_images`, `runs`, `compute_dtype`, `measured_at`).
    Skipped combinations have `skipped` set to the reason and no metrics; they are never on the front."""
    latest = latest_measurements(ws)
    variants = {v.id: v for v in ws.variants()}
    rows, by_key = [], {}
    for (vid, be, bs), m in sorted(latest.items(), key=lambda kv: (variants[kv[0][0]].created_at, kv[0][1:])):
        v = variants[vid]
        metrics = m["metrics"]
        row = dict(model=v.model, dataset=v.dataset, variant=v.id, stages=v.stages, chain=v.chain, format=v.format,
                   backend=be, device=m["device"], batch_size=bs, threads=m["threads"],
                   **{k: metrics.get(k) for k in _METRIC_KEYS},
                   pareto=False, baseline=None, speedup=None, accuracy_change=None, no_real_speedup=False,
                   skipped=metrics.get("skipped"), measured_at=m["created_at"])
        if row["stable"] is None:
            row["stable"] = False
        by_key[(vid, be, bs)] = row
        rows.append(row)
    measured = [r for r in rows if r["skipped"] is None]
    for r in measured:
        base = _baseline(r, variants, by_key)
        if base is not None:
            _against(r, base)
    mark_pareto(measured, DEFAULT_OBJECTIVES)
    keep = [r for r in rows if (not models or r["model"] in models) and (not backend or r["backend"] == backend)
            and (not dataset or r["dataset"] == dataset) and (include_skipped or r["skipped"] is None)]
    return keep


def _measured(row) -> bool:
    return row is not None and row["skipped"] is None


def _baseline(row: dict, variants: dict, by_key: dict) -> dict | None:
    """The row `row` is compared with (module docstring), measured on the same data files: an accuracy change
    between two test sets would be no change of the variant's."""
    v = variants[row["variant"]]
    parent_id, root = v.parent_id, v

    def comparable(candidate) -> bool:
        return _measured(candidate) and candidate["data_sha256"] == row["data_sha256"]

    while parent_id:
        candidate = by_key.get((parent_id, row["backend"], row["batch_size"]))
        if comparable(candidate):
            return candidate
        root = variants[parent_id]
        parent_id = root.parent_id
    if root is v:
        return None
    same_device = [r for (vid, be, bs), r in by_key.items()
                   if vid == root.id and bs == row["batch_size"] and comparable(r) and r["device"] == row["device"]]
    same_device.sort(key=lambda r: r["backend"] != _EAGER.get(row["device"]))
    return same_device[0] if same_device else None


def _against(row: dict, base: dict) -> None:
    row["baseline"] = f"{base['variant']}@{base['backend']}"
    if row["latency_ms_p50"] and base["latency_ms_p50"]:
        row["speedup"] = base["latency_ms_p50"] / row["latency_ms_p50"]
    if row["accuracy_top1"] is not None and base["accuracy_top1"] is not None:
        row["accuracy_change"] = row["accuracy_top1"] - base["accuracy_top1"]
    cuts = any(row[k] is not None and base[k] is not None and row[k] < base[k] for k in ("macs", "size_bytes"))
    ci, base_ci = row["latency_ms_ci95"], base["latency_ms_ci95"]
    faster = bool(ci and base_ci and ci[1] < base_ci[0])
    row["no_real_speedup"] = bool(cuts and not faster)


# -- output ------------------------------------------------------------------------------------------------
def to_json(rows: list[dict]) -> str:
    return json.dumps(rows, indent=1)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    keys = [k for k in KEYS if k != "latency_ms_ci95"] + ["latency_ms_ci95_low", "latency_ms_ci95_high"]
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        ci = r.get("latency_ms_ci95") or [None, None]
        writer.writerow(dict(r, stages="+".join(r["stages"]), latency_ms_ci95_low=ci[0], latency_ms_ci95_high=ci[1]))
    return out.getvalue().rstrip("\n")


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "-"


def _fmt_count(n) -> str:
    if n is None:
        return "-"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _pct(x, signed=False) -> str:
    return "-" if x is None else (f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}")


def to_table(rows: list[dict]) -> str:
    """The side-by-side table, then skipped combinations, then one winner line per objective."""
    head = ("Model", "Variant", "Backend", "Batch", "Top-1 %", "Params", "MACs", "Size", "p50 ms [95% CI]",
            "p90 ms", "p99 ms", "Samples/s", "% peak", "Peak mem", "Speed-up", "Δ top-1", "Pareto", "Flags")
    body = []
    for r in rows:
        if r["skipped"] is not None:
            continue
        ci = r["latency_ms_ci95"]
        flags = [f for f, on in (("no real speed-up", r["no_real_speedup"]), ("unstable", not r["stable"])) if on]
        body.append((r["model"], f"{r['chain']} [{r['variant'][:8]}]", r["backend"], str(r["batch_size"]),
                     _pct(r["accuracy_top1"]), _fmt_count(r["params"]), _fmt_count(r["macs"]),
                     _fmt_bytes(r["size_bytes"]), f"{r['latency_ms_p50']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                     f"{r['latency_ms_p90']:.3f}", f"{r['latency_ms_p99']:.3f}", f"{r['throughput_per_s']:.0f}",
                     "-" if r["pct_of_peak"] is None else f"{r['pct_of_peak']:.1f}", _fmt_bytes(r["peak_mem_bytes"]),
                     "-" if r["speedup"] is None else f"{r['speedup']:.2f}x", _pct(r["accuracy_change"], True),
                     "*" if r["pareto"] else "", ", ".join(flags)))
    if not body:
        lines = ["no measurements (run `profile run` first)"]
    else:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    skipped = [r for r in rows if r["skipped"] is not None]
    if skipped:
        lines += ["", "skipped:"]
        lines += [f"  {r['model']} {r['chain']} [{r['variant'][:8]}] {r['backend']} batch {r['batch_size']}: "
                  f"{r['skipped']}" for r in skipped]
    lines += [""] + winners(rows)
    return "\n".join(lines)


def winners(rows: list[dict]) -> list[str]:
    """One line per objective: most accurate, smallest, fewest MACs, and per batch size the fastest and the
    highest throughput (with the rows whose latency interval overlaps the winner's, i.e. tied within noise)."""
    measured = [r for r in rows if r["skipped"] is None]
    if not measured:
        return []

    def name(r):
        return f"{r['model']} {r['chain']} [{r['variant'][:8]}] on {r['backend']}"

    lines = []
    acc = [r for r in measured if r["accuracy_top1"] is not None]
    if acc:
        best = max(acc, key=lambda r: r["accuracy_top1"])
        lines.append(f"most accurate: {name(best)}, top-1 {_pct(best['accuracy_top1'])}%")
    for key, label, fmt in (("size_bytes", "smallest", _fmt_bytes), ("macs", "fewest MACs", _fmt_count)):
        have = [r for r in measured if r[key] is not None]
        if have:
            best = min(have, key=lambda r: r[key])
            lines.append(f"{label}: {best['model']} {best['chain']} [{best['variant'][:8]}], {fmt(best[key])}")
    for bs in sorted({r["batch_size"] for r in measured}):
        group = [r for r in measured if r["batch_size"] == bs]
        best = min(group, key=lambda r: r["latency_ms_p50"])
        ties = [r for r in group if r is not best and r["latency_ms_ci95"][0] <= best["latency_ms_ci95"][1]]
        tie = f" (tied within noise with {len(ties)} other{'s' if len(ties) != 1 else ''})" if ties else ""
        lines.append(f"fastest at batch {bs}: {name(best)}, p50 {best['latency_ms_p50']:.3f} ms{tie}")
        best = max(group, key=lambda r: r["throughput_per_s"])
        lines.append(f"highest throughput at batch {bs}: {name(best)}, {best['throughput_per_s']:.0f} samples/s")
    return lines


def render(rows: list[dict], fmt: str = "table") -> str:
    return {"table": to_table, "json": to_json, "csv": to_csv}[fmt](rows)
