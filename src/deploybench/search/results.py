"""What a search found: the front (chosen on validation, with the test split read once, for its rows), the winner
within the budget, how it compares with the best `optimize all` variant within the same budget (a paired speed-up,
same backend and batch size), and Optuna's parameter importances. The summary is stored as `WS/search/<study>.json`
(`store.search_summaries`), which the report and the results files read.
"""

from __future__ import annotations

import json
import time
import warnings
from typing import Callable

import optuna
from optuna.trial import TrialState

from deploybench.optimize.pipeline import default_chains, run_chains
from deploybench.platform import machine_slug
from deploybench.search.objective import OBJECTIVES, SearchContext, measure
from deploybench.search.space import output_format
from deploybench.store import Workspace, atomic_write_text
from deploybench.store.search_summaries import summary_path

_ROW_KEYS = (
    "variant_id",
    "chain",
    "threads",
    "val_top1",
    "val_drop_pts",
    "speedup",
    "latency_ms_p50",
    "latency_ms_ci95",
    "stable",
    "size_bytes",
    "macs",
)


def _feasible(trial: optuna.trial.FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def _row(ws: Workspace, ctx: SearchContext, trial: optuna.trial.FrozenTrial | None, result: dict, recipe: str) -> dict:
    """A front or winner row: the trial's measurements, with its variant's test top-1 (recorded by the stage that
    made it; read here, for the final rows only)."""
    row = {k: result.get(k) for k in _ROW_KEYS}
    test = ws.get_variant(result["variant_id"]).metrics.get("accuracy_top1")
    base_test = ctx.base.metrics.get("accuracy_top1")
    row.update(
        trial=trial.number if trial else None,
        recipe=recipe,
        params=dict(trial.params) if trial else None,
        test_top1=test,
        test_drop_pts=100 * (base_test - test) if None not in (test, base_test) else None,
    )
    return row


def _dominated_on_test(row: dict, rows: list[dict]) -> bool:
    return any(
        o is not row
        and o["test_top1"] is not None
        and row["test_top1"] is not None
        and o["speedup"] >= row["speedup"]
        and o["test_top1"] >= row["test_top1"]
        and (o["speedup"] > row["speedup"] or o["test_top1"] > row["test_top1"])
        for o in rows
    )


def front_rows(ws: Workspace, study: optuna.Study, ctx: SearchContext) -> list[dict]:
    """The feasible Pareto front on validation (`study.best_trials`), one row per (variant, threads), fastest
    first, each marked `test_front` when no other row of it is at least as fast and as accurate on test."""
    rows, seen = [], set()
    for t in sorted(study.best_trials, key=lambda t: -t.user_attrs["result"]["speedup"]):
        r = t.user_attrs["result"]
        if (r["variant_id"], r["threads"]) not in seen:
            seen.add((r["variant_id"], r["threads"]))
            rows.append(_row(ws, ctx, t, r, t.user_attrs.get("recipe", "")))
    for row in rows:
        row["test_front"] = not _dominated_on_test(row, rows)
    return rows


def winner(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The fastest trial within the budget on validation (its constraint met; the more accurate on a tie), or
    None."""
    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "result" in t.user_attrs and _feasible(t)
    ]
    if not feasible:
        return None
    return max(feasible, key=lambda t: (t.user_attrs["result"]["speedup"], t.user_attrs["result"]["val_top1"]))


def optimize_all_comparison(
    ws: Workspace, study: optuna.Study, ctx: SearchContext, best: dict, log: Callable[[str], None]
) -> dict:
    """The best `optimize all` variant within the budget on validation (the fastest, at the study's threads), made
    by its chains that end in a format the backend runs (found in the store after `optimize all`), and the winner's
    paired speed-up over it."""
    chains = [c for c in default_chains() if ctx.space.runs(output_format(c.steps[-1]))]
    results = run_chains(ws, ctx.root, ctx.data_dir, chains, progress=False, log=log)
    candidates = []
    for r in results:
        if r.status == "ok":
            m = measure(ctx, study, r.variants[-1], ctx.max_threads, None)
            candidates.append(dict({k: m.get(k) for k in _ROW_KEYS}, chain_name=r.name))
    within = [c for c in candidates if c["val_drop_pts"] <= ctx.budget_pts]
    if not within:
        return dict(candidates=candidates, best=None, why=f"no optimize all variant is within {ctx.budget_pts:g} pts")
    top = max(within, key=lambda c: (c["speedup"], c["val_top1"]))
    same = (top["variant_id"], top["threads"]) == (best["variant_id"], best["threads"])
    ratio = (
        1.0
        if same
        else ctx.timer.versus(
            ws.get_variant(top["variant_id"]), top["threads"], ws.get_variant(best["variant_id"]), best["threads"]
        )
    )
    test = ws.get_variant(top["variant_id"]).metrics.get("accuracy_top1")
    return dict(
        candidates=candidates, best=dict(top, test_top1=test), same_variant=same, winner_speedup_over_best=ratio
    )


def importances(study: optuna.Study, objectives: tuple[str, ...]) -> dict:
    """Optuna's parameter importances per objective, or why there are none. Its default evaluator (PED-ANOVA) ranks
    what makes a target low, so a maximized objective is negated."""
    out = {}
    for i, name in enumerate(objectives):
        sign = -1.0 if OBJECTIVES[name][0] == "maximize" else 1.0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # small-sample notices: the table says how many trials there are
                out[name] = optuna.importance.get_param_importances(
                    study, target=lambda t, i=i, s=sign: s * t.values[i]
                )
        except (RuntimeError, ValueError, ZeroDivisionError) as exc:
            out[name] = {"unavailable": str(exc).splitlines()[0][:200]}
    return out


def trial_history(study: optuna.Study) -> list[dict]:
    """Every trial in order: state, recipe, choices, rung-0 and final measurements, why it was screened out."""
    out = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        out.append(
            dict(
                number=t.number,
                state=t.state.name.lower(),
                recipe=a.get("recipe"),
                params=dict(t.params),
                rung0={k: a["rung0"].get(k) for k in _ROW_KEYS} if a.get("rung0") else None,
                result={k: a["result"].get(k) for k in _ROW_KEYS} if a.get("result") else None,
                promotion=a.get("promotion"),
                error=a.get("error"),
                seconds=a.get("seconds"),
                retry_of=t.system_attrs.get("failed_trial"),
                menu_chain=a.get("menu_chain"),
                variant_id=a.get("variant_id"),
            )
        )
    return out


def search_results(
    ws: Workspace, study: optuna.Study, ctx: SearchContext, *, spec_dict: dict, log: Callable[[str], None] = print
) -> dict:
    """The summary of `study` (see the module docstring), written to `summary_path` and returned."""
    best = winner(study)
    winner_row = _row(ws, ctx, best, best.user_attrs["result"], best.user_attrs.get("recipe", "")) if best else None
    fp = study.user_attrs.get("machine_fingerprint", {})
    target = study.user_attrs.get("target", {})
    summary = dict(
        spec_dict,
        target=target,
        fidelity=target.get("fidelity"),
        machine=machine_slug(fp),
        fingerprint=fp,
        objectives=list(ctx.objectives),
        directions=[OBJECTIVES[o][0] for o in ctx.objectives],
        budget_pts=ctx.budget_pts,
        base=dict(
            variant_id=ctx.base.id,
            chain=ctx.base.chain,
            val_top1=ctx.base_accuracy(None),
            test_top1=ctx.base.metrics.get("accuracy_top1"),
            latency_ms_p50=ctx.timer.base_stats["latency_ms_p50"],
        ),
        counts={s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState},
        trials=trial_history(study),
        front=front_rows(ws, study, ctx),
        winner=winner_row,
        optimize_all=optimize_all_comparison(ws, study, ctx, winner_row, log) if winner_row else None,
        importances=importances(study, ctx.objectives),
        finished_at=time.time(),
    )
    atomic_write_text(summary_path(ws, spec_dict["study"]), json.dumps(summary, indent=1, default=str))
    return summary


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def change_pts(drop_pts) -> str:
    """A loss in points as a signed change (`-0.42`, `+0.10`; `+0.00`, never `-0.00`)."""
    return "-" if drop_pts is None else f"{0.0 - drop_pts + 0.0:+.2f}"


def render_summary(summary: dict) -> str:
    """The summary as the lines `deploybench search` prints."""
    b = summary["base"]
    lines = [
        f"fp32 on {summary['target']['backend']}: variant {b['variant_id']} ({b['chain']}), val top-1 "
        f"{_pct(b['val_top1'])}, test top-1 {_pct(b['test_top1'])}, p50 {b['latency_ms_p50']:.3f} ms",
        "front (chosen on validation; test read once, for these rows):",
    ]
    head = (
        "trial",
        "variant",
        "threads",
        "val top-1",
        "Δval pts",
        "test top-1",
        "Δtest pts",
        "speed-up",
        "p50 ms",
        "size",
        "recipe",
    )
    table = [head] + [
        (
            str(r["trial"]),
            r["variant_id"],
            str(r["threads"]),
            _pct(r["val_top1"]),
            change_pts(r["val_drop_pts"]),
            _pct(r["test_top1"]),
            change_pts(r["test_drop_pts"]),
            f"{r['speedup']:.2f}x",
            f"{r['latency_ms_p50']:.3f}",
            f"{r['size_bytes'] / 1e3:.1f} kB",
            r["recipe"] + ("" if r["test_front"] else " (dominated on test)"),
        )
        for r in summary["front"]
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    w = summary["winner"]
    budget = summary["budget_pts"]
    if w is None:
        lines.append(f"winner: none; no trial is within {budget:g} pts on validation")
        return "\n".join(lines)
    lines.append(
        f"winner within {budget:g} pts: trial {w['trial']}, variant {w['variant_id']} ({w['chain']}), "
        f"{w['threads']} thread(s): {w['recipe']}; val {change_pts(w['val_drop_pts'])} pts, test "
        f"{change_pts(w['test_drop_pts'])} pts, "
        f"{w['speedup']:.2f}x over fp32 (paired), p50 {w['latency_ms_p50']:.3f} ms"
    )
    oa = summary.get("optimize_all") or {}
    if oa.get("best"):
        o = oa["best"]
        verdict = (
            "the same variant"
            if oa["same_variant"]
            else f"the winner is {oa['winner_speedup_over_best']:.2f}x as fast as it (paired, same backend and "
            f"batch size)"
        )
        lines.append(
            f"optimize all's best within {budget:g} pts: variant {o['variant_id']} ({o['chain']}), val "
            f"{change_pts(o['val_drop_pts'])} pts, test top-1 {_pct(o['test_top1'])}, {o['speedup']:.2f}x "
            f"over fp32: {verdict}"
        )
    elif oa:
        lines.append(f"optimize all: {oa.get('why')}")
    return "\n".join(lines)
