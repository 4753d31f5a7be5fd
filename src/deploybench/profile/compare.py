"""`profile compare`: one row per (variant, backend, batch size) from the store, with speed-up and accuracy
change against the parent, Pareto membership, the "no real speed-up" flag and winner lines.

The baseline of a row is the nearest ancestor measured on the same backend and batch size; when no ancestor
runs on that backend (an ONNX export on ort-cpu), the trained root on the same device and batch size (its eager
torch row first). `no_real_speedup` is set when a variant has fewer MACs or fewer bytes than its baseline but
its latency interval is not entirely below the baseline's.

Every renderer (table, Markdown, CSV, JSON, and the HTML report) shows the columns of
`deploybench.profile.columns`; `write_results` writes one Markdown file per machine in the store.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from pathlib import Path

from deploybench.profile.columns import BY_KEY, COLUMNS, Column, fmt_fraction_pct, fmt_ms
from deploybench.profile.pareto import DEFAULT_OBJECTIVES, mark_pareto
from deploybench.store import Workspace, atomic_write_text
from deploybench.store.pairs import stored_pairs
from deploybench.store.search_summaries import stored_summaries

KEYS = (
    "model",
    "dataset",
    "variant",
    "stages",
    "chain",
    "format",
    "backend",
    "device",
    "batch_size",
    "threads",
    "accuracy_top1",
    "accuracy_top5",
    "params",
    "macs",
    "flops",
    "size_bytes",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_ci95",
    "throughput_per_s",
    "peak_mem_bytes",
    "pct_of_peak",
    "stable",
    "pareto",
    "baseline",
    "speedup",
    "accuracy_change",
    "no_real_speedup",
    "skipped",
    "data_sha256",
    "flags",
)
_METRIC_KEYS = (
    "accuracy_top1",
    "accuracy_top5",
    "test_images",
    "params",
    "macs",
    "flops",
    "size_bytes",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_ci95",
    "throughput_per_s",
    "peak_mem_bytes",
    "pct_of_peak",
    "pct_of_peak_invalid",
    "peak_flops",
    "peak_dtype",
    "peak_runtime",
    "stable",
    "attempts",
    "runs",
    "compute_dtype",
    "data_sha256",
)
_EAGER = {"cpu": "torch-cpu", "cuda": "torch-cuda"}


@functools.lru_cache(maxsize=1)
def _live_fingerprint() -> dict:
    from deploybench.platform import fingerprint

    return fingerprint()


def stored_fingerprint(environment: dict) -> dict:
    """The machine fingerprint of a stored measurement environment: its CPU model, GPU and CPU flags; an
    environment stored without flags takes this machine's only when the CPU model is the same (else none)."""
    flags = environment.get("cpu_flags")
    if flags is None:
        live = _live_fingerprint()
        flags = live["cpu_flags"] if live["cpu_model"] == environment.get("cpu_model") else []
    fp = dict(cpu_flags=sorted(flags), gpu=environment.get("gpu"))
    if environment.get("cpu_model"):
        fp["cpu_model"] = environment["cpu_model"]
    return fp


def measurement_machine(m: dict) -> str:
    """The machine slug (`deploybench.platform.machine_slug`) of a stored measurement row."""
    from deploybench.platform import machine_slug

    return machine_slug(stored_fingerprint(m.get("environment") or {}))


def latest_measurements(ws: Workspace, machine: str | None = None) -> dict[tuple[str, str, int], dict]:
    """The most recent stored row per (variant id, backend, batch size), of one machine (slug) when given."""
    latest = {}
    for m in ws.measurements():  # ordered by id: later rows replace earlier ones
        if machine is None or measurement_machine(m) == machine:
            latest[(m["variant_id"], m["backend"], m["batch_size"])] = m
    return latest


def compare_rows(
    ws: Workspace,
    models: list[str] | None = None,
    backend: str | None = None,
    dataset: str | None = None,
    include_skipped: bool = True,
    machine: str | None = None,
) -> list[dict]:
    """Rows for `profile compare` (keys: `KEYS`, plus `test_images`, `runs`, `compute_dtype`, `measured_at`),
    from the measurements of one machine (slug) when `machine` is given. Skipped combinations have `skipped`
    set to the reason and no metrics; they are never on the front. Each row names its `machine`; baselines and
    fronts are per machine, since latencies of two machines are not comparable (an imported workspace)."""
    variants = {v.id: v for v in ws.variants()}
    rows = []
    for slug in [machine] if machine else machines(ws):
        rows += _machine_rows(latest_measurements(ws, slug), variants, slug)
    measured = [r for r in rows if r["skipped"] is None]
    mark_pareto(measured, DEFAULT_OBJECTIVES, group_by=("machine", "dataset", "backend", "batch_size"))
    keep = [
        r
        for r in rows
        if (not models or r["model"] in models)
        and (not backend or r["backend"] == backend)
        and (not dataset or r["dataset"] == dataset)
        and (include_skipped or r["skipped"] is None)
    ]
    return keep


def _machine_rows(latest: dict, variants: dict, slug: str) -> list[dict]:
    """The rows of one machine's latest measurements, with baselines from that machine only."""
    rows, by_key = [], {}
    for (vid, be, bs), m in sorted(latest.items(), key=lambda kv: (variants[kv[0][0]].created_at, kv[0][1:])):
        v = variants[vid]
        metrics = m["metrics"]
        row = dict(
            model=v.model,
            dataset=v.dataset,
            variant=v.id,
            stages=v.stages,
            chain=v.chain,
            format=v.format,
            backend=be,
            device=m["device"],
            batch_size=bs,
            threads=m["threads"],
            **{k: metrics.get(k) for k in _METRIC_KEYS},
            pareto=False,
            baseline=None,
            speedup=None,
            accuracy_change=None,
            no_real_speedup=False,
            skipped=metrics.get("skipped"),
            measured_at=m["created_at"],
            machine=slug,
        )
        if row["stable"] is None:
            row["stable"] = False
        by_key[(vid, be, bs)] = row
        rows.append(row)
    for r in rows:
        if r["skipped"] is None:
            base = _baseline(r, variants, by_key)
            if base is not None:
                _against(r, base)
    return rows


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
    same_device = [
        r
        for (vid, be, bs), r in by_key.items()
        if vid == root.id and bs == row["batch_size"] and comparable(r) and r["device"] == row["device"]
    ]
    same_device.sort(key=lambda r: r["backend"] != _EAGER.get(row["device"]))
    return same_device[0] if same_device else None


def _against(row: dict, base: dict) -> None:
    row["baseline"] = f"{base['variant']}@{base['backend']}"
    # A ratio with an unstable timing on either side says more about the moment than about the variant.
    if row["latency_ms_p50"] and base["latency_ms_p50"] and row["stable"] and base["stable"]:
        row["speedup"] = base["latency_ms_p50"] / row["latency_ms_p50"]
    if row["accuracy_top1"] is not None and base["accuracy_top1"] is not None:
        row["accuracy_change"] = row["accuracy_top1"] - base["accuracy_top1"]
    cuts = any(row[k] is not None and base[k] is not None and row[k] < base[k] for k in ("macs", "size_bytes"))
    ci, base_ci = row["latency_ms_ci95"], base["latency_ms_ci95"]
    faster = bool(ci and base_ci and ci[1] < base_ci[0])
    row["no_real_speedup"] = bool(cuts and not faster)


# -- output: every renderer shows the columns of `deploybench.profile.columns` ------------------------------
def _raw(row: dict) -> dict:
    """`row` with every column's raw value under its key (derived ones, such as flags, included)."""
    return dict(row, **{c.key: c.raw(row) for c in COLUMNS if c.derive})


def to_json(rows: list[dict]) -> str:
    return json.dumps([_raw(r) for r in rows], indent=1)


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    keys = [k for k in KEYS if k != "latency_ms_ci95"] + ["latency_ms_ci95_low", "latency_ms_ci95_high"]
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in map(_raw, rows):
        ci = r.get("latency_ms_ci95") or [None, None]
        writer.writerow(
            dict(
                r,
                stages="+".join(r["stages"]),
                flags="+".join(r["flags"]),
                latency_ms_ci95_low=ci[0],
                latency_ms_ci95_high=ci[1],
            )
        )
    return out.getvalue().rstrip("\n")


def _name(r: dict) -> str:
    return f"{r['model']} {r['chain']} [{r['variant'][:8]}]"


def _skipped_lines(rows: list[dict]) -> list[str]:
    return [
        f"{_name(r)} {r['backend']} batch {r['batch_size']}: {r['skipped']}" for r in rows if r["skipped"] is not None
    ]


def to_table(rows: list[dict], columns: tuple[Column, ...] = COLUMNS) -> str:
    """The side-by-side table, then skipped combinations, then one winner line per objective."""
    body = [[c.cell(r) for c in columns] for r in rows if r["skipped"] is None]
    if not body:
        lines = ["no measurements (run `profile run` first)"]
    else:
        head = [c.header for c in columns]
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines = [
            "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    skipped = _skipped_lines(rows)
    if skipped:
        lines += ["", "skipped:"] + [f"  {line}" for line in skipped]
    return "\n".join(lines + [""] + winners(rows))


def markdown_table(rows: list[dict], columns: tuple[Column, ...] = COLUMNS) -> list[str]:
    """A GitHub table of the measured rows (numbers aligned right), as lines."""

    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [line(c.header for c in columns), "|" + "|".join(" --- " if c.text else " ---: " for c in columns) + "|"]
    return lines + [line(c.cell(r) for c in columns) for r in rows if r["skipped"] is None]


def to_markdown(rows: list[dict]) -> str:
    """`to_table` in Markdown: the table, skipped combinations and winners as lists."""
    if not any(r["skipped"] is None for r in rows):
        lines = ["No measurements (run `profile run` first)."]
    else:
        lines = markdown_table(rows)
    skipped = _skipped_lines(rows)
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- {line}" for line in skipped]
    won = winners(rows)
    if won:
        lines += ["", "Winners:", ""] + [f"- {line}" for line in won]
    return "\n".join(lines)


def winners(rows: list[dict]) -> list[str]:
    """One line per objective: most accurate, smallest, fewest MACs, and per batch size the fastest and the
    highest throughput among stable timings (with the rows whose latency interval overlaps the winner's, i.e.
    tied within noise)."""
    measured = [r for r in rows if r["skipped"] is None]
    if not measured:
        return []

    def name(r):
        return f"{_name(r)} on {r['backend']}"

    lines = []
    acc = [r for r in measured if r["accuracy_top1"] is not None]
    if acc:
        best = max(acc, key=lambda r: r["accuracy_top1"])
        lines.append(f"most accurate: {name(best)}, top-1 {fmt_fraction_pct(best['accuracy_top1'])}%")
    for key, label in (("size_bytes", "smallest"), ("macs", "fewest MACs")):
        have = [r for r in measured if r[key] is not None]
        if have:
            best = min(have, key=lambda r: r[key])
            lines.append(f"{label}: {_name(best)}, {BY_KEY[key].cell(best)}")
    for bs in sorted({r["batch_size"] for r in measured}):
        group = [r for r in measured if r["batch_size"] == bs and r["stable"]]  # an unstable timing cannot win
        if not group:
            lines.append(f"fastest at batch {bs}: none (no stable timing)")
            continue
        best = min(group, key=lambda r: r["latency_ms_p50"])
        ties = [r for r in group if r is not best and r["latency_ms_ci95"][0] <= best["latency_ms_ci95"][1]]
        tie = f" (tied within noise with {len(ties)} other{'s' if len(ties) != 1 else ''})" if ties else ""
        lines.append(f"fastest at batch {bs}: {name(best)}, p50 {fmt_ms(best['latency_ms_p50'])} ms{tie}")
        best = max(group, key=lambda r: r["throughput_per_s"])
        lines.append(
            f"highest throughput at batch {bs}: {name(best)}, {BY_KEY['throughput_per_s'].cell(best)} samples/s"
        )
    return lines


def render(rows: list[dict], fmt: str = "table") -> str:
    return {"table": to_table, "json": to_json, "csv": to_csv, "markdown": to_markdown}[fmt](rows)


# -- results files: docs/results/<machine>.md, one per machine in the store ---------------------------------
RESULTS_DIR = "docs/results"
_GROUP_KEYS = ("backend", "batch_size")  # the heading of each table names them


def machines(ws: Workspace) -> list[str]:
    """The machine slugs of every stored measurement, sorted."""
    return sorted({measurement_machine(m) for m in ws.measurements()})


def _values(envs: list[dict], get) -> str:
    """The distinct values of `get(env)` over `envs`, in order, joined by " / " ("unknown" when none)."""
    seen = [str(v) for v in dict.fromkeys(get(e) for e in envs) if v not in (None, "", [])]
    return " / ".join(seen) or "unknown"


def _environment_lines(envs: list[dict], fp: dict, command: str) -> list[str]:
    libraries = sorted({name for e in envs for name in (e.get("libraries") or {})})
    versions = ", ".join(f"{n} {_values(envs, lambda e, n=n: (e.get('libraries') or {}).get(n))}" for n in libraries)
    return [
        f"- **CPU**: {fp.get('cpu_model', 'unknown')}; kernel flags: {', '.join(fp['cpu_flags']) or 'unknown'}",
        f"- **Cores**: {_values(envs, lambda e: e.get('physical_cores'))} physical, "
        f"{_values(envs, lambda e: e.get('cpu_count'))} logical; threads used: "
        f"{_values(envs, lambda e: e.get('threads'))}",
        f"- **GPU**: {fp.get('gpu') or 'none'}"
        + (f" (CUDA {_values(envs, lambda e: e.get('cuda'))})" if fp.get("gpu") else ""),
        f"- **Python**: {_values(envs, lambda e: e.get('python'))} on {_values(envs, lambda e: e.get('platform'))}",
        f"- **Libraries**: {versions or 'unknown'}",
        f"- **Commit**: {_values(envs, lambda e: e.get('commit'))}",
        f"- **Regenerate**: `{command}` (replaces this file)",
    ]


def _training_lines(ws: Workspace, dataset: str, models: set[str], latest: dict) -> list[str]:
    """A table of the trained variants of `dataset` for `models`, each as recorded when it was trained: what it
    was trained on (device, precision, epochs), how long and how fast, its test top-1, and the minutes spent on
    what descends from it: making its optimized variants (`make_seconds` of each, stage and accuracy passes) and
    profiling them all once on this results file's machine (`job_seconds` of each latest row in `latest`), their
    total, and for the models trained with the same time budget (a `pipeline --budget-minutes` run), when there
    are two or more, a row of their sums. A time is left blank when one of its parts was not recorded."""
    trained = [v for v in ws.variants(dataset=dataset) if v.stage == "train" and v.model in models]
    if not trained:
        return []
    made: dict[str, list] = {}
    for v in ws.variants(dataset=dataset):
        made.setdefault(ws.lineage(v)[0].id, []).append(v)
    lines = [
        "",
        "Training (each trained variant as recorded when it was trained), and the minutes its optimized variants took"
        " to make and all its variants to profile once on this machine:",
        "",
        "| model | variant | device | precision | threads | epochs | train min | images/s | test top-1 | variants "
        "| optimize min | profile min | total min |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def num(m: dict, key: str, fmt: str, scale: float = 1.0) -> str:
        return format(m[key] * scale, fmt) if isinstance(m.get(key), (int, float)) else ""

    def seconds(parts: list) -> float | None:
        """The sum of `parts`, or None when one of them was not recorded (no sum that would pass for the whole)."""
        known = [x for x in parts if isinstance(x, (int, float))]
        return float(sum(known)) if parts and len(known) == len(parts) else None

    def minutes(x: float | None) -> str:
        return "" if x is None else f"{x / 60:.1f}"

    runs: dict[float, list] = {}  # per training budget (a pipeline run's --budget-minutes): its models' columns
    for v in sorted(trained, key=lambda v: (v.model, v.id)):
        m, family = v.metrics, made.get(v.id, [v])
        ids = {x.id for x in family}
        optimize = seconds([x.metrics.get("make_seconds") for x in family if x.id != v.id])
        profile = seconds([r["metrics"].get("job_seconds") for k, r in latest.items() if k[0] in ids])
        train = seconds([m.get("train_seconds")])
        total = seconds([train, optimize, profile])
        budget = (v.config.get("recipe") or {}).get("budget_minutes")
        if isinstance(budget, (int, float)) and budget > 0:
            runs.setdefault(float(budget), []).append((train, optimize, profile, total, len(family)))
        lines.append(
            f"| {v.model} | {v.id} | {m.get('device', '')} | {m.get('train_precision', 'fp32')} | "
            f"{num(m, 'threads', '.0f')} | {num(m, 'epochs', 'g')} | {minutes(train)} | "
            f"{num(m, 'images_per_s', '.0f')} | {num(m, 'accuracy_top1', '.2f', 100)}% | {len(family)} | "
            f"{minutes(optimize)} | {minutes(profile)} | {minutes(total)} |"
        )
    for budget, columns in sorted(runs.items()):
        if len(columns) < 2:
            continue
        train, optimize, profile, total = (minutes(seconds([c[i] for c in columns])) for i in range(4))
        lines.append(
            f"| **{len(columns)} models, --budget-minutes {budget:g}** | | | | | | {train} | | | "
            f"{sum(c[4] for c in columns)} | {optimize} | {profile} | {f'**{total}**' if total else ''} |"
        )
    return lines


def _search_lines(ws: Workspace, machine: str, dataset: str) -> list[str]:
    """A table of the searches of `dataset` measured on `machine` (the summaries `deploybench search` stores): per
    study its winner within the budget and `optimize all`'s best within the same budget, each as its change in
    top-1 against fp32 on validation / test and its paired speed-up over fp32, and the winner's paired speed-up
    over that best."""
    found = [
        s
        for s in stored_summaries(ws)
        if s.get("machine") == machine and (s.get("target") or {}).get("dataset") == dataset
    ]
    if not found:
        return []

    def pts(drop) -> str:
        return "" if not isinstance(drop, (int, float)) else f"{0.0 - drop + 0.0:+.2f}"

    def fmt(x, spec: str) -> str:
        return format(x, spec) if isinstance(x, (int, float)) else ""

    lines = [
        "",
        "Searches (`deploybench search`; chosen on validation, test read once; speed-ups paired, over fp32 on the "
        "same backend and batch size):",
        "",
        "| study | backend | batch | budget pts | trials done / screened out | trial min | fp32 p50 ms | winner | "
        "Δval / Δtest pts | × fp32 | optimize all's best | Δval / Δtest pts | × fp32 | winner × that best |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    for s in sorted(found, key=lambda s: str(s.get("study"))):
        target, base, counts = s.get("target") or {}, s.get("base") or {}, s.get("counts") or {}
        w, oa = s.get("winner") or {}, s.get("optimize_all") or {}
        best = oa.get("best") or {}
        base_test, best_test = base.get("test_top1"), best.get("test_top1")
        best_test_drop = 100 * (base_test - best_test) if None not in (base_test, best_test) else None
        seconds = sum(t.get("seconds") or 0 for t in s["trials"])
        lines.append(
            f"| {s.get('study')} | {target.get('backend', '')} | {target.get('batch_size', '')} | "
            f"{fmt(s.get('budget_pts'), 'g')} | {counts.get('complete', 0)} / {counts.get('pruned', 0)} | "
            f"{seconds / 60:.1f} | {fmt(base.get('latency_ms_p50'), '.3f')} | "
            + (
                f"{w['variant_id']}: {w.get('recipe', '')} | {pts(w.get('val_drop_pts'))} / "
                f"{pts(w.get('test_drop_pts'))} | {fmt(w.get('speedup'), '.2f')}× | "
                if w
                else "none within the budget | | | "
            )
            + (
                f"{best['variant_id']}: {best.get('chain_name', best.get('chain', ''))} | "
                f"{pts(best.get('val_drop_pts'))} / {pts(best_test_drop)} | {fmt(best.get('speedup'), '.2f')}× | "
                f"{fmt(oa.get('winner_speedup_over_best'), '.2f')}× |"
                if best
                else f"{oa.get('why', 'not compared')} | | | |"
            )
        )
    return lines


def _pair_lines(ws: Workspace, pairs: list[dict], dataset: str) -> list[str]:
    """A table of one machine's stored `pairs` (`store.pairs`) of `dataset`: each variant on its
    backend over another on its backend, timed in alternation in one run, with the precision each runtime
    computed in, both top-1s and the command."""
    variants = {v.id: v for v in ws.variants(dataset=dataset)}
    found = [p for p in pairs if p["variant"] in variants and p["against"] in variants]
    if not found:
        return []

    def form(vid: str, backend: str) -> str:
        return f"{variants[vid].chain} @ {backend} ({vid[:8]})"

    def top1(vid: str) -> str:
        value = variants[vid].metrics.get("accuracy_top1")
        return f"{100 * value:.2f}" if isinstance(value, (int, float)) else ""

    lines = [
        "",
        "Paired speed-ups (each variant timed in alternation with the one it is compared with, in one run; "
        "`profile side-by-side` puts every toolchain's fp32 and int8 form over torch.compile's fp32 and each int8 "
        "form over its own toolchain's fp32):",
        "",
        "| model | batch | threads | variant @ backend | runs in | top-1 % | over | runs in | top-1 % | speed-up | "
        "command |",
        "|---|---:|---:|---|---|---:|---|---|---:|---:|---|",
    ]
    for p in sorted(found, key=lambda p: (variants[p["variant"]].model, p["batch_size"], p["against"])):
        lines.append(
            f"| {variants[p['variant']].model} | {p['batch_size']} | {p['threads']} | "
            f"{form(p['variant'], p['backend'])} | {p.get('runs_in', '')} | {top1(p['variant'])} | "
            f"{form(p['against'], p['against_backend'])} | {p.get('against_runs_in', '')} | {top1(p['against'])} | "
            f"{p['speedup']:.2f}× | "
            f"`{p.get('command', '')}` |"
        )
    return lines


def results_markdown(ws: Workspace, machine: str, command: str = "deploybench profile results") -> str:
    """The results file of one machine (slug): its environment, then per dataset one table per (backend, batch
    size) from the columns, skipped combinations and the winner lines. Only that machine's measurements and
    paired speed-ups."""
    latest = latest_measurements(ws, machine)
    pairs = [p for p in stored_pairs(ws) if p["machine"] == machine and isinstance(p.get("environment"), dict)]
    if not latest and not pairs:
        raise ValueError(f"no measurements of machine {machine!r} in {ws.root}")
    envs = [m["environment"] for m in latest.values()] + [p["environment"] for p in pairs]
    rows = compare_rows(ws, machine=machine)
    lines = [f"# deploybench results: {machine}", "", *_environment_lines(envs, stored_fingerprint(envs[-1]), command)]
    columns = tuple(c for c in COLUMNS if c.key not in _GROUP_KEYS)
    for dataset in sorted({r["dataset"] for r in rows} | {p.get("dataset") for p in pairs if p.get("dataset")}):
        here = [r for r in rows if r["dataset"] == dataset]
        lines += ["", f"## {dataset}"]
        paired = {p.get("model") for p in pairs if p.get("dataset") == dataset}
        lines += _training_lines(ws, dataset, {r["model"] for r in here} | paired, latest)
        lines += _search_lines(ws, machine, dataset)
        lines += _pair_lines(ws, pairs, dataset)
        for backend, bs in sorted({(r["backend"], r["batch_size"]) for r in here if r["skipped"] is None}):
            group = [r for r in here if r["backend"] == backend and r["batch_size"] == bs]
            lines += ["", f"### {backend}, batch {bs}", "", *markdown_table(group, columns)]
        skipped = _skipped_lines(here)
        if skipped:
            lines += ["", "Skipped:", ""] + [f"- {line}" for line in skipped]
        won = winners(here)
        if won:
            lines += ["", "Winners:", ""] + [f"- {line}" for line in won]
    return "\n".join(lines) + "\n"


def write_results(
    ws: Workspace, out_dir: str | Path = RESULTS_DIR, command: str = "deploybench profile results"
) -> list[Path]:
    """Write `out_dir/<machine>.md` (atomically, replacing it) for every machine in the store; returns the paths."""
    return [
        atomic_write_text(Path(out_dir) / f"{slug}.md", results_markdown(ws, slug, command))
        for slug in sorted(set(machines(ws)) | {p["machine"] for p in stored_pairs(ws)})
    ]
