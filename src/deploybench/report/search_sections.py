"""The report's search sections, one per study, built from the workspace alone: the summaries `deploybench search`
stores in `WS/search/<study>.json` and, for a study kept in the workspace's own `studies.db`, Optuna's parameter
importance plots (`optuna.visualization.matplotlib`).

Each section is a dict for the template `search_sections.html.j2`; strings from the store are plain text there
(Jinja2 escapes them) and in the figures (drawn without mathtext).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt

from deploybench.report.plots import _svg
from deploybench.store import Workspace
from deploybench.store.search_summaries import stored_summaries

_STATE_COLORS = {
    "complete": "#1c7ed6",
    "pruned": "#adb5bd",
    "fail": "#e03131",
    "running": "#f59f00",
    "waiting": "#f59f00",
}


def front_svg(summary: dict) -> str:
    """Validation top-1 against paired speed-up over fp32: every measured trial, the front, the winner and the best
    `optimize all` variant within the budget."""
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    done = [t["result"] for t in summary["trials"] if t.get("result")]
    ax.scatter([r["speedup"] for r in done], [100 * r["val_top1"] for r in done], s=18, c="#adb5bd", label="trials")
    front = sorted(summary.get("front") or [], key=lambda r: r["speedup"])
    ax.plot(
        [r["speedup"] for r in front],
        [100 * r["val_top1"] for r in front],
        "o-",
        c="#d9480f",
        ms=5,
        label="front (validation)",
    )
    if summary.get("winner"):
        w = summary["winner"]
        ax.scatter([w["speedup"]], [100 * w["val_top1"]], marker="*", s=160, c="#2f9e44", zorder=5, label="winner")
    best = (summary.get("optimize_all") or {}).get("best")
    if best:
        ax.scatter(
            [best["speedup"]],
            [100 * best["val_top1"]],
            marker="D",
            s=40,
            c="#7048e8",
            zorder=4,
            label="optimize all's best",
        )
    base = summary.get("base") or {}
    if base.get("val_top1") is not None:
        ax.axhline(100 * base["val_top1"] - summary["budget_pts"], ls="--", lw=1, c="#495057", label="budget")
    ax.set(xlabel="speed-up over fp32 (paired)", ylabel="validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _svg(fig)


def history_svg(summary: dict) -> str:
    """Per trial: its speed-up (rung 0 for screened-out trials) coloured by state, and its validation loss in
    points."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(5.6, 4.2), sharex=True)
    for t in summary["trials"]:
        r = t.get("result") or t.get("rung0")
        if r:
            color = _STATE_COLORS.get(t["state"], "#495057")
            ax1.scatter([t["number"]], [r["speedup"]], c=color, s=18)
            ax2.scatter([t["number"]], [r["val_drop_pts"]], c=color, s=18)
    ax2.axhline(summary["budget_pts"], ls="--", lw=1, c="#495057")
    ax1.set(ylabel="speed-up")
    ax2.set(xlabel="trial (grey: screened out at rung 0)", ylabel="val loss (pts)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _svg(fig)


def _importance_svgs(summary: dict) -> list[dict]:
    """Optuna's importance plot per objective, when the study is in this workspace's `studies.db` (a report opens no
    other database); else an empty list (the stored importances are shown as a table)."""
    url = summary.get("storage") or ""
    if not summary.get("storage_in_workspace") or not url.startswith("sqlite:///"):
        return []
    if not Path(url[len("sqlite:///") :]).is_file():  # opening a missing file would create it
        return []
    import optuna  # the study is opened only for a report that has one
    from optuna.visualization.matplotlib import plot_param_importances

    out = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.load_study(study_name=summary["study"], storage=url)
            directions = summary.get("directions") or ["minimize"] * len(summary.get("objectives", []))
            for i, (name, direction) in enumerate(zip(summary.get("objectives", []), directions, strict=True)):
                # Optuna's default evaluator ranks what makes a target low: a maximized objective is negated.
                sign = -1.0 if direction == "maximize" else 1.0
                with matplotlib.rc_context():  # Optuna switches matplotlib to ggplot for good: not the report's plots
                    ax = plot_param_importances(study, target=lambda t, i=i, s=sign: s * t.values[i], target_name=name)
                    ax.figure.set_size_inches(5.6, 3.6)
                    ax.figure.tight_layout()  # its parameter names are cut off otherwise
                    out.append(dict(objective=name, svg=_svg(ax.figure)))
    except Exception:  # noqa: BLE001  too few trials, a moved workspace: the table stands in
        plt.close("all")
        return []
    return out


def search_report_sections(ws: Workspace) -> list[dict]:
    """One section per stored search summary, newest first: title, summary, front and trial rows, figures."""
    sections = []
    for s in stored_summaries(ws):
        ident = s.get("target") or {}
        sections.append(
            dict(
                study=s.get("study"),
                finished_at=s.get("finished_at") or 0,
                title=f"{s.get('study')}: {ident.get('model')} on {ident.get('dataset')}, {ident.get('backend')} batch "
                f"{ident.get('batch_size')}, budget {s.get('budget_pts')} pts",
                machine=s.get("machine"),
                storage=s.get("storage"),
                sampler=s.get("sampler"),
                counts=s.get("counts"),
                fidelity=s.get("fidelity"),
                base=s.get("base"),
                front=s.get("front") or [],
                winner=s.get("winner"),
                optimize_all=s.get("optimize_all"),
                trials=s["trials"],
                importances=s.get("importances") or {},
                front_svg=front_svg(s),
                history_svg=history_svg(s),
                importance_svgs=_importance_svgs(s),
            )
        )
    return sorted(sections, key=lambda sec: -sec["finished_at"])
