"""`build_report`: one self-contained HTML file (inline SVG, CSS and JS) from the workspace store alone."""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

import jinja2

from deploybench.errors import DamagedStore
from deploybench.profile.columns import (
    BY_KEY,
    COLUMNS,
    FLAG_NO_SPEEDUP,
    FLAG_PARETO,
    FLAG_UNSTABLE,
    fmt_bytes,
    fmt_count,
    fmt_fraction_pct,
)
from deploybench.profile.compare import compare_rows
from deploybench.profile.pareto import ACCURACY, MACS, SIZE, mark_pareto
from deploybench.report.plots import confusion_svg, learning_curves_svg, pareto_svg
from deploybench.report.search_sections import search_report_sections
from deploybench.store import Variant, Workspace, atomic_write_text

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("deploybench.report", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
)
# The shown text of a value comes from the columns (`deploybench.profile.columns`), never from the template.
_ENV.filters.update(
    column=lambda value, key: BY_KEY[key].fmt(value), fraction_pct=fmt_fraction_pct, bytes=fmt_bytes, count=fmt_count
)
THRESHOLDS_POINTS = (0.5, 1.0, 2.0)
_FLAG_CLASSES = {FLAG_PARETO: "t-front", FLAG_NO_SPEEDUP: "t-nospeed", FLAG_UNSTABLE: "t-unstable"}


def _sort_value(value) -> float | None:
    """The number a cell sorts by in the browser (an interval by its low end); None for text and missing."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value and isinstance(value[0], (int, float)) else None
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def variant_table(rows: list[dict]) -> dict:
    """The variants table from `COLUMNS`: headers (with which way is better) and, per row, its CSS classes and
    cells (shown text, sort number, flags as tags)."""
    body = []
    for r in rows:
        classes = " ".join(
            c
            for c, on in (("front", r["pareto"]), ("nospeed", r["no_real_speedup"]), ("unstable", not r["stable"]))
            if on
        )
        cells = [
            dict(
                text=c.cell(r),
                sort=_sort_value(c.raw(r)),
                cls=" ".join(n for n, on in (("l", c.text), ("lat", c.key.startswith("latency_ms"))) if on),
                tags=[(f, _FLAG_CLASSES[f]) for f in c.raw(r)] if c.key == "flags" else None,
            )
            for c in COLUMNS
        ]
        body.append(dict(classes=classes, cells=cells))
    heads = [
        dict(
            text=c.header,
            left=c.text,
            title=None if c.higher_is_better is None else f"{'higher' if c.higher_is_better else 'lower'} is better",
        )
        for c in COLUMNS
    ]
    return dict(heads=heads, rows=body)


def _label(row: dict) -> str:
    return f"{row['model']}:{row['chain'].partition('+')[2] or 'fp32'}"


def recommendations(rows: list[dict]) -> list[dict]:
    """Per (dataset, backend, batch size): the fastest variant within 0.5, 1 and 2 points of the best accuracy.
    Only stable timings compete: an unstable one cannot win."""
    groups = defaultdict(list)
    for r in rows:
        if r.get("latency_ms_p50") is not None and r.get("accuracy_top1") is not None and r.get("stable"):
            groups[(r["dataset"], r["backend"], r["batch_size"], r.get("machine", ""))].append(r)  # never mix machines
    out = []
    for (dataset, backend, bs, machine), rs in sorted(groups.items()):
        best = max(r["accuracy_top1"] for r in rs)
        picks = []
        for pts in THRESHOLDS_POINTS:
            ok = [r for r in rs if 100 * (best - r["accuracy_top1"]) <= pts]
            pick = min(ok, key=lambda r: r["latency_ms_p50"])
            picks.append(
                dict(
                    points=pts,
                    label=_label(pick),
                    variant=pick["variant"],
                    latency_ms_p50=pick["latency_ms_p50"],
                    accuracy_top1=pick["accuracy_top1"],
                )
            )
        out.append(dict(dataset=dataset, backend=backend, batch_size=bs, machine=machine, best=best, picks=picks))
    return out


def _variant_points(ws: Workspace, rows: list[dict]) -> list[dict]:
    """One point per variant (accuracy, size, MACs) for the backend-independent fronts."""
    seen = {}
    for r in rows:
        if r.get("accuracy_top1") is not None and r["variant"] not in seen:
            seen[r["variant"]] = dict(r, label=_label(r))
    pts = list(seen.values())
    mark_pareto(pts, (ACCURACY, SIZE), group_by=("dataset",), key="pareto_size")
    mark_pareto(pts, (ACCURACY, MACS), group_by=("dataset",), key="pareto_macs")
    return pts


def _lineage_tree(variants: list[Variant]) -> list[dict]:
    children = defaultdict(list)
    for v in variants:
        children[v.parent_id].append(v)

    def node(v: Variant) -> dict:
        m = v.metrics
        return dict(
            id=v.id,
            stage=v.stage,
            format=v.format,
            size_bytes=v.size_bytes,
            accuracy=_number(m.get("accuracy_top1")),
            agreement=_number(m.get("agreement_top1")),
            config={k: val for k, val in v.config.items() if not k.startswith("_") and k != "recipe"},
            children=[node(c) for c in children[v.id]],
        )

    return [node(v) for v in children[None]]


def _number(value) -> float | None:
    """`value` when it is a number, else None: metrics are read from the workspace and drawn as numbers."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


HISTORY_KEYS = ("epoch", "train_loss", "val_loss", "train_top1", "val_top1")
PER_CLASS_KEYS = ("precision", "recall", "f1", "support")


def _rows_with(rows, keys: tuple[str, ...], text_key: str | None = None) -> bool:
    """Whether `rows` is a list of objects whose `keys` are numbers (and whose `text_key` is text)."""
    return isinstance(rows, list) and all(
        isinstance(r, dict)
        and all(_number(r.get(k)) is not None for k in keys)
        and (text_key is None or isinstance(r.get(text_key), str))
        for r in rows
    )


def _confusion_fits(confusion, classes) -> bool:
    """Whether `confusion` is a square matrix of counts with one row and column per name in `classes`."""
    n = len(classes)
    return (
        isinstance(confusion, list)
        and len(confusion) == n
        and all(
            isinstance(row, list)
            and len(row) == n
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in row)
            for row in confusion
        )
    )


def _training_problem(record) -> str | None:
    """What is wrong with a parsed training.json for the report; None when it has the shapes drawn from."""
    if not isinstance(record, dict):
        return "it is not a JSON object"
    if not _rows_with(record.get("history", []), HISTORY_KEYS):
        return "its history is not a list of epochs with numbers"
    if not _rows_with(record.get("per_class", []), PER_CLASS_KEYS, "name"):
        return "its per_class is not a list of named classes with numbers"
    classes = record.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return "its classes are not a list of names"
    if not _confusion_fits(record.get("confusion", []), classes):
        return "its confusion is not a square matrix of counts, one row per class"
    return None


def _training_record(root: Variant) -> dict:
    """The trained variant's training.json ({} when it has none), checked. A damaged one is a DamagedStore that
    says how to recover."""
    path = root.path / "training.json"
    if not path.exists() and not path.is_symlink():
        return {}
    problem, record = None, {}
    if path.is_symlink() or not path.is_file():
        problem = "it is not a plain file"
    else:
        try:
            record = json.loads(path.read_bytes())
        except ValueError:  # also bytes that are not UTF-8
            problem = "it is not JSON"
        else:
            problem = _training_problem(record)
    if problem:
        raise DamagedStore(
            f"the training record {path} of variant {root.id} is damaged: {problem}. The report draws the learning "
            f"curves, the confusion matrix and the per-class table from it. To recover, restore the file from a "
            f"copy, or move the folder {root.path} aside and run the same train command again, which makes it anew"
        )
    return record


def _layers(metrics: dict) -> tuple[list[dict], object]:
    """The trained variant's 30 layers with the most MACs and the ops fvcore skipped, from its static profile."""
    static = metrics.get("profile_static")
    if not isinstance(static, dict):
        return [], {}
    layers = static.get("by_module")
    layers = [r for r in layers if _rows_with([r], ("macs", "params"))] if isinstance(layers, list) else []
    return sorted(layers, key=lambda r: -r["macs"])[:30], static.get("skipped_ops", {})


def _training_figures(training: dict) -> tuple[str | None, str | None]:
    """(learning curves, confusion matrix) as SVG drawn by the report from the record's numbers."""
    history, classes = training.get("history", []), training.get("classes", [])
    return (
        learning_curves_svg(history) if history else None,
        confusion_svg(training["confusion"], classes) if classes else None,
    )


def _model_sections(ws: Workspace) -> list[dict]:
    sections = []
    by_model = defaultdict(list)
    every = ws.variants()
    by_id = {v.id: v for v in every}
    for v in every:
        by_model[(v.model, v.dataset)].append(v)
    for (model, dataset), vs in sorted(by_model.items()):
        trained = [v for v in vs if v.stage == "train"]
        root = trained[-1] if trained else None
        training = _training_record(root) if root else {}
        curves, confusion = _training_figures(training)
        layers, skipped_ops = _layers(root.metrics) if root else ([], {})
        sections.append(
            dict(
                model=model,
                dataset=dataset,
                root=root,
                lineage=_lineage_tree(vs),
                curves=curves,
                confusion=confusion,
                per_class=training.get("per_class", []),
                history=training.get("history", []),
                layers=layers,
                skipped_ops=skipped_ops,
                optimized=[
                    dict(
                        id=v.id,
                        stages=v.chain,
                        accuracy=_number(v.metrics.get("accuracy_top1")),
                        agreement=_number(v.metrics.get("agreement_top1")),
                        parent_accuracy=_number(by_id[v.parent_id].metrics.get("accuracy_top1"))
                        if v.parent_id in by_id
                        else None,
                    )
                    for v in vs
                    if v.stage != "train"
                ],
            )
        )
    return sections


def _provenance(ws: Workspace, rows: list[dict]) -> dict:
    envs = [m["environment"] for m in ws.measurements()[-1:]]
    peaks = {}
    for r in rows:
        key = f"peak_flops/{r['device']}/{r['threads']}"
        value = ws.get_machine(key) if key not in peaks else None
        if value:
            peaks[key] = {
                k: v
                for k, v in value.items()
                if k in ("float32", "bfloat16", "int8", "float16", "by_runtime", "hardware")
            }
    return dict(
        environment=envs[0] if envs else {},
        peaks=peaks,
        commands=[" ".join(c["argv"]) for c in ws.commands()],
        generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


def build_report(ws: Workspace, out: str | Path = "reports/index.html") -> Path:
    """Write the report for everything in `ws` to `out` (atomically) and return its path."""
    rows = [r for r in compare_rows(ws) if r.get("skipped") is None]
    for r in rows:
        r["label"] = _label(r)
    latency_plots = []
    groups = defaultdict(list)
    for r in rows:
        groups[(r["dataset"], r["backend"], r["batch_size"], r.get("machine", ""))].append(r)  # one front per machine
    several = len({key[3] for key in groups}) > 1
    for (dataset, backend, bs, machine), rs in sorted(groups.items()):
        where = f" · {machine}" if several else ""
        latency_plots.append(
            dict(
                title=f"{dataset} · {backend} · batch {bs}{where}",
                machine=machine,
                svg=pareto_svg(
                    rs, "latency_ms_p50", "latency p50 (ms), 95% CI", f"accuracy vs latency — {backend}, batch {bs}"
                ),
            )
        )
    pts = _variant_points(ws, rows)
    static_plots = [
        dict(
            title="accuracy vs size",
            svg=pareto_svg(pts, "size_bytes", "size on disk (bytes)", "accuracy vs size", "pareto_size"),
        ),
        dict(
            title="accuracy vs MACs", svg=pareto_svg(pts, "macs", "MACs per image", "accuracy vs MACs", "pareto_macs")
        ),
    ]
    html = _ENV.get_template("report.html.j2").render(
        rows=rows,
        table=variant_table(rows),
        latency_plots=latency_plots,
        static_plots=static_plots,
        recommendations=recommendations(rows),
        models=_model_sections(ws),
        searches=search_report_sections(ws),
        provenance=_provenance(ws, rows),
        workspace=str(ws.root),
    )
    return atomic_write_text(out, html)
