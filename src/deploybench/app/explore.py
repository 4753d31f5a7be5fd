"""Explore: the front of one machine, backend and batch size from `compare_rows` (the rows of `profile compare`),
as chart points and table cells, and one variant's card."""

from __future__ import annotations

import pandas as pd

from deploybench.profile.columns import BY_KEY, COLUMNS
from deploybench.profile.compare import compare_rows, machines
from deploybench.profile.static import model_size_bytes
from deploybench.store import Workspace

AXES = (
    "latency_ms_p50",
    "accuracy_top1",
    "accuracy_top5",
    "size_bytes",
    "macs",
    "params",
    "throughput_per_s",
    "peak_mem_bytes",
    "latency_ms_p90",
    "latency_ms_p99",
    "pct_of_peak",
)
_CARD_KEYS = (
    "backend",
    "batch_size",
    "threads",
    "accuracy_top1",
    "latency_ms_p50",
    "latency_ms_ci95",
    "throughput_per_s",
    "speedup",
    "peak_mem_bytes",
    "flags",
)
_PERCENT = {"accuracy_top1", "accuracy_top5"}  # fractions in the store, shown as percentages


def axis_title(key: str) -> str:
    col = BY_KEY.get(key)
    return col.header if col else {"accuracy_top5": "Top-5 %"}.get(key, key)


def options(ws: Workspace) -> dict:
    """What the filters can choose from the store now: machines, backends, batch sizes."""
    rows = [r for r in compare_rows(ws, include_skipped=False)]
    return dict(
        machines=machines(ws),
        backends=sorted({r["backend"] for r in rows}),
        batch_sizes=sorted({int(r["batch_size"]) for r in rows}),
    )


def front_rows(ws: Workspace, machine: str | None, backend: str | None, batch_size: int | None) -> list[dict]:
    """The measured rows of one machine, backend and batch size (each `None`: all), Pareto flags included."""
    rows = compare_rows(ws, backend=backend or None, machine=machine or None, include_skipped=False)
    return [r for r in rows if batch_size in (None, "") or int(r["batch_size"]) == int(batch_size)]


def _value(row: dict, key: str):
    value = row.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    return 100 * value if key in _PERCENT else value


def chart_frame(rows: list[dict], x: str, y: str) -> pd.DataFrame:
    """One point per row with both axes measured: the axes, and what the hover shows."""
    points = [
        dict(
            x=_value(r, x),
            y=_value(r, y),
            variant=r["variant"][:10],
            chain=r.get("chain") or "",
            backend=r["backend"],
            batch=int(r["batch_size"]),
            front="Pareto front" if r.get("pareto") else "other",
        )
        for r in rows
    ]
    points = [p for p in points if p["x"] is not None and p["y"] is not None]
    return pd.DataFrame(points, columns=["x", "y", "variant", "chain", "backend", "batch", "front"])


def table_frame(rows: list[dict]) -> pd.DataFrame:
    """The rows as shown by every renderer (`profile.columns`), the full variant id last for selection."""
    return pd.DataFrame(
        [[c.cell(r) for c in COLUMNS] + [r["variant"]] for r in rows], columns=[c.header for c in COLUMNS] + ["id"]
    )


def _md(text) -> str:
    # markdown special characters in stored names and configs are shown, not interpreted
    return "".join("\\" + ch if ch in "\\`*_[]<>|~#" else ch for ch in str(text))


def variant_card(ws: Workspace, variant_id: str | None) -> str:
    """Markdown card of one stored variant: lineage, recipe/config, metrics per backend, files and sizes."""
    if not variant_id:
        return "Choose a variant."
    v = ws.find_variant(str(variant_id))  # a parameter of the query, never a path
    if v is None:
        return "No such variant in the workspace."
    lines = [
        f"### {_md(v.model)} · {_md(v.dataset)} · {_md(v.chain)}",
        "",
        f"id `{v.id}`, format {_md(v.format)}",
        "",
        "**Lineage** (oldest first)",
        "",
    ]
    lines += [f"{i + 1}. {_md(a.stage)} `{a.id[:12]}` ({_md(a.format)})" for i, a in enumerate(ws.lineage(v))]
    config = {k: val for k, val in v.config.items() if not k.startswith("_")}
    lines += ["", "**Recipe / config**", "", "| key | value |", "|---|---|"]
    lines += [f"| {_md(k)} | {_md(val)} |" for k, val in sorted(config.items())]
    shown = [BY_KEY[k] for k in _CARD_KEYS]
    rows = [r for r in compare_rows(ws, include_skipped=False) if r["variant"] == v.id]
    lines += ["", "**Metrics per backend**", ""]
    if rows:
        lines += ["| " + " | ".join(c.header for c in shown) + " |", "|" + "---|" * len(shown)]
        lines += ["| " + " | ".join(_md(c.cell(r)) for c in shown) + " |" for r in rows]
    else:
        lines.append("not measured yet (`deploybench profile run`)")
    lines += [
        "",
        f"**Files** (model {BY_KEY['size_bytes'].fmt(model_size_bytes(v))}, "
        f"all {BY_KEY['size_bytes'].fmt(v.size_bytes)})",
        "",
        "| file | size |",
        "|---|---|",
    ]
    for name in v.files:
        path = v.path / name
        size = path.stat().st_size if path.is_file() else None
        lines.append(f"| {_md(name)} | {BY_KEY['size_bytes'].fmt(size) if size is not None else 'missing'} |")
    return "\n".join(lines)
